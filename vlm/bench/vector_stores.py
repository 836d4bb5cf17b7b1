"""Embedded vector stores for the image index, measured side by side: recall@k against exact search, query
latency, build time, disk size and incremental adds, on random unit vectors (the CLIP's projection width).

Each (store, size) runs in its own child process under ``--timeout`` seconds, so a store that cannot build the
larger size in reasonable time is reported as such instead of stalling the table. Every store gets the same
vectors (seeded), the same queries (held-out random unit vectors) and the same exact top-k (numpy, float32).
Settings: an HNSW graph where the store has one (M=16, efConstruction=100, ef=128 at query time), cosine /
inner product; ``faiss_flat``, ``milvus_flat`` and ``lancedb_flat`` (no index) search exactly (brute force); Qdrant's local mode has no index (it searches exactly, in numpy), which the table shows. LanceDB
re-ranks 4k candidates with the full vectors (``refine_factor=4``, 20 IVF partitions probed).

Measured per store and size:
  build s     insert all vectors in batches of 10,000 and build the index, until a query can run
  disk MiB    the store's folder (or file) afterwards
  recall@k    mean overlap of the store's top k with the exact top k, over ``--queries`` queries
  query ms    median (and p95) of one query at a time (k results, ids only), after 10 warm-up queries
  add 1k s    adding 1,000 more vectors to the built store, persisted, until they are searchable
  found       whether each of 20 of those new vectors comes back as its own top-1 right after the add

Needs, besides the ``[index]`` extra (pymilvus, milvus-lite, faiss-cpu), the stores compared against it, which
are not project dependencies: ``pip install lancedb qdrant-client`` (measured: lancedb 0.40.0,
qdrant-client 1.20.0, faiss-cpu 1.15.1, pymilvus 2.6.2, milvus-lite 3.2.2).

Usage (niced, one core; prints a markdown table, and JSON lines with --json):
    python vlm/bench/vector_stores.py [--sizes 100000,1000000] [--stores faiss,milvus,lancedb,qdrant]
                                  [--dim 256] [--queries 200] [--k 10] [--timeout 1800] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STORES = ("faiss", "milvus", "lancedb", "qdrant", "faiss_flat", "milvus_flat", "lancedb_flat")
BATCH = 10_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF = 16, 100, 128
ADD = 1_000


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
        out[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ base.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def disk_mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# -- one adapter per store: build(vectors) / search(q, k) -> ids / add(ids, vectors) / close ----------------
class Faiss:
    label = "FAISS (faiss-cpu, HNSW)"
    exact = False

    def __init__(self, root: Path, dim: int):
        import faiss

        self.faiss, self.file = faiss, root / "index.faiss"
        if self.exact:
            inner = faiss.IndexFlatIP(dim)
        else:
            inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF
        self.inner = inner  # the wrapper does not own it: keep it alive
        self.index = faiss.IndexIDMap2(inner)

    def add(self, ids, vectors):
        self.index.add_with_ids(vectors, ids.astype(np.int64))
        self.faiss.write_index(self.index, str(self.file))  # persisting = rewriting the whole file

    build = add

    def search(self, q, k):
        return self.index.search(q[None], k)[1][0]

    def path(self):
        return self.file

    def close(self):
        pass


class FaissFlat(Faiss):
    label = "FAISS (faiss-cpu, flat: exact)"
    exact = True


class Milvus:
    label = "Milvus Lite (pymilvus + milvus-lite, HNSW)"
    index_type = "HNSW"

    def __init__(self, root: Path, dim: int):
        from pymilvus import DataType, MilvusClient

        self.file = root / "store.db"
        self.client = MilvusClient(str(self.file))
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION} if self.index_type == "HNSW" else {}
        index.add_index(field_name="vector", index_type=self.index_type, metric_type="IP", params=params)
        self.client.create_collection("bench", schema=schema, index_params=index)

    def _insert(self, ids, vectors):
        for s in range(0, len(ids), BATCH):
            rows = [{"id": int(i), "vector": v} for i, v in zip(ids[s:s + BATCH], vectors[s:s + BATCH].tolist())]
            self.client.insert("bench", rows)
        self.client.flush("bench")

    def build(self, ids, vectors):
        self._insert(ids, vectors)
        self.client.load_collection("bench")

    add = _insert

    def search(self, q, k):
        params = {"params": {"ef": HNSW_EF}} if self.index_type == "HNSW" else {}
        hits = self.client.search("bench", data=[q.tolist()], limit=k, search_params=params)
        return np.array([h["id"] for h in hits[0]])

    def path(self):
        return self.file

    def close(self):
        self.client.close()


class MilvusFlat(Milvus):
    label = "Milvus Lite (pymilvus + milvus-lite, FLAT: exact)"
    index_type = "FLAT"


class Lance:
    label = "LanceDB (IVF_HNSW_SQ)"
    exact = False

    def __init__(self, root: Path, dim: int):
        import lancedb

        self.dir, self.dim = root / "lance", dim
        self.db = lancedb.connect(str(self.dir))
        self.table = None

    def _batch(self, ids, vectors):
        import pyarrow as pa

        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        return pa.table({"id": pa.array(ids, type=pa.int64()),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim)})

    def build(self, ids, vectors):
        for s in range(0, len(ids), BATCH):
            batch = self._batch(ids[s:s + BATCH], vectors[s:s + BATCH])
            if self.table is None:
                self.table = self.db.create_table("bench", batch)
            else:
                self.table.add(batch)
        if self.exact:
            return
        self.table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ",
                                m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)

    def add(self, ids, vectors):
        self.table.add(self._batch(ids, vectors))  # unindexed rows are searched exactly until optimize()

    def search(self, q, k):
        query = self.table.search(q, vector_column_name="vector").metric("cosine").limit(k)
        if not self.exact:
            query = query.ef(HNSW_EF).nprobes(20).refine_factor(4)
        return np.asarray(query.select(["id"]).to_arrow()["id"])

    def path(self):
        return self.dir

    def close(self):
        pass


class LanceFlat(Lance):
    label = "LanceDB (no index: exact)"
    exact = True


class Qdrant:
    label = "Qdrant client, local mode (exact, numpy)"

    def __init__(self, root: Path, dim: int):
        from qdrant_client import QdrantClient, models

        self.dir, self.models = root / "qdrant", models
        self.client = QdrantClient(path=str(self.dir))
        self.client.create_collection("bench", vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))

    def add(self, ids, vectors):
        for s in range(0, len(ids), BATCH):
            self.client.upsert("bench", points=self.models.Batch(ids=[int(i) for i in ids[s:s + BATCH]],
                                                                 vectors=vectors[s:s + BATCH].tolist()))

    build = add

    def search(self, q, k):
        return np.array([p.id for p in self.client.query_points("bench", query=q.tolist(), limit=k).points])

    def path(self):
        return self.dir

    def close(self):
        self.client.close()


ADAPTERS = {"faiss": Faiss, "milvus": Milvus, "lancedb": Lance, "qdrant": Qdrant, "faiss_flat": FaissFlat,
            "milvus_flat": MilvusFlat, "lancedb_flat": LanceFlat}


def measure(store: str, n: int, dim: int, queries: int, k: int, seed: int, workdir: Path) -> dict:
    base = unit_vectors(n, dim, seed)
    qs = unit_vectors(queries, dim, seed + 1)
    truth = exact_top(base, qs, k)
    root = Path(tempfile.mkdtemp(prefix=f"{store}-{n}-", dir=workdir))
    try:
        t0 = time.perf_counter()
        db = ADAPTERS[store](root, dim)
        db.build(np.arange(n), base)
        build_s = time.perf_counter() - t0
        size = disk_mib(db.path())
        for q in qs[:10]:
            db.search(q, k)
        times, overlap = [], []
        for q, want in zip(qs, truth):
            t = time.perf_counter()
            got = db.search(q, k)
            times.append(time.perf_counter() - t)
            overlap.append(len(set(got.tolist()) & set(want.tolist())) / k)
        extra = unit_vectors(ADD, dim, seed + 2)
        t = time.perf_counter()
        db.add(np.arange(n, n + ADD), extra)
        add_s = time.perf_counter() - t
        found = sum(int(db.search(v, 1)[0]) == n + i for i, v in enumerate(extra[:20]))
        db.close()
        return {"store": store, "label": db.label, "n": n, "build_s": round(build_s, 1), "disk_mib": round(size, 1),
                "recall": round(float(np.mean(overlap)), 4), "query_ms": round(statistics.median(times) * 1e3, 2),
                "query_p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2), "add_s": round(add_s, 2),
                "found": f"{found}/20"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(rows: list[dict], k: int) -> str:
    head = f"| store | vectors | build s | disk MiB | recall@{k} | query ms (p50 / p95) | add 1k s | new found |"
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['store']} | {r['n']:,} | {r['error']} | | | | | |")
        else:
            lines.append(f"| {r['label']} | {r['n']:,} | {r['build_s']} | {r['disk_mib']} | {r['recall']} | "
                         f"{r['query_ms']} / {r['query_p95_ms']} | {r['add_s']} | {r['found']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per (store, size) before giving up")
    ap.add_argument("--workdir", type=Path, default=None, help="where stores are built (default: a temp folder)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per result")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: STORE:N
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        store, n = args.one.split(":")
        print(json.dumps(measure(store, int(n), args.dim, args.queries, args.k, args.seed, workdir)), flush=True)
        return 0
    stores = [s for s in args.stores.split(",") if s]
    unknown = set(stores) - set(STORES)
    if unknown:
        ap.error(f"unknown store(s) {sorted(unknown)}; choose from {', '.join(STORES)}")
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for store in stores:
            cmd = [sys.executable, __file__, "--one", f"{store}:{n}", "--dim", str(args.dim), "--queries",
                   str(args.queries), "--k", str(args.k), "--seed", str(args.seed), "--workdir", str(workdir)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
                if done.returncode:
                    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    row = {"store": store, "n": n, "error": f"failed: {last[:120]}"}
                else:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"store": store, "n": n, "error": f"not done in {args.timeout:.0f} s"}
            rows.append(row)
            print(json.dumps(row) if args.json else f"done: {store} {n:,}", file=sys.stderr, flush=True)
    print(table(rows, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
