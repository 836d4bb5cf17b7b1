"""The CLIP's uses measured on Flickr8k dev with a real CLIP: zero-shot classification through
``Clip.classify`` and text->image search through the image index (``vlm.index``) against the exact computation.

Zero-shot: the labelled set of :mod:`vlm.eval.retrieval_zeroshot` (an image gets a label when at least 3 of
its 5 captions mention one of ten frequent nouns' words and every other label is mentioned by at most one:
344 of the 1,000 dev images, 10 labels). Each image is classified with ``Clip.classify`` twice: with the
evaluation's own prompts (template ``{}`` over "a dog", "water", ...; the top-1 must equal ``vlm eval
retrieval``'s zero-shot figure) and with a three-template ensemble ("a photo of {}.", "a picture of {}.",
"{}"). Reported against chance (1/10) and the majority label.

Search: every dev image is added to a fresh index (timed: images/s including hashing and embedding); each
of the 5 captions of every image is a query (``search_vectors``, k=10). Recall@1/5/10 (text->image: the
caption's image among the top k) from the index, and from the exact similarity matrix of the same unit
vectors (torch); the script checks that they agree and reports the share of queries whose top-10 lists are
identical (ties in the tenth place may swap).

Usage (float32, one core):  python vlm/eval/clip_uses.py --clip runs/lit/model [--data ../shared/data/flickr8k]
                            [--limit N] [--workdir DIR] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from vlm.paths import data_dir

ENSEMBLE = ["a photo of {}.", "a picture of {}.", "{}"]


def zero_shot(clip, records, data_dir: Path) -> dict:
    from vlm.eval.retrieval_zeroshot import LABELS, labelled

    pairs = labelled([r["captions"] for r in records])
    names = list(LABELS)
    prompts = [LABELS[n][0] for n in names]
    truth = [label for _, label in pairs]
    out = {"images": len(pairs), "labels": dict(Counter(truth)), "chance_top1": round(1 / len(names), 4),
           "majority_top1": round(Counter(truth).most_common(1)[0][1] / max(len(truth), 1), 4)}
    paths = [data_dir / records[i]["image"] for i, _ in pairs]
    vectors = clip.embed_images(paths)  # one pass; classify() below re-embeds, this checks it agrees
    for name, templates in (("eval_prompts", ["{}"]), ("ensemble", ENSEMBLE)):
        text = clip.label_vectors(prompts, templates)
        guess = (vectors @ text.T).argmax(1).tolist()
        hits = [names[g] == t for g, t in zip(guess, truth)]
        per = {n: sum(h for h, t in zip(hits, truth) if t == n) / c for n, c in Counter(truth).items()}
        out[name] = {"top1": round(sum(hits) / len(hits), 4), "balanced_top1": round(sum(per.values()) / len(per), 4)}
    # classify() itself on a sample: the same answers as the batched computation above
    sample = list(range(0, len(paths), max(1, len(paths) // 20)))
    text = clip.label_vectors(prompts, ["{}"])
    agree = sum(clip.classify(paths[i], prompts, template="{}")[0][0] == prompts[int((vectors[i] @ text.T).argmax())]
                for i in sample)
    out["classify_agrees_with_batched"] = f"{agree}/{len(sample)}"
    return out


def search(clip, records, data_dir: Path, workdir: Path) -> dict:
    from vlm.index import ImageIndex

    paths = [(data_dir / r["image"]).resolve() for r in records]
    captions = [c for r in records for c in r["captions"]]
    owner = torch.tensor([i for i, r in enumerate(records) for _ in r["captions"]])
    with ImageIndex.open(workdir / "dev-index", clip, create=True) as index:
        t = time.perf_counter()
        report = index.add(paths)
        add_s = time.perf_counter() - t
        if report.failed:
            raise RuntimeError(f"unreadable dev images: {report.failed[:3]}")
        queries = clip.embed_texts(captions)
        t = time.perf_counter()
        hits = []
        for s in range(0, len(queries), 256):
            hits += index.search_vectors(queries[s:s + 256], k=10)
        search_s = time.perf_counter() - t
        t = time.perf_counter()
        single = [index.search_vectors(queries[i:i + 1], k=10) for i in range(20)]
        one_ms = (time.perf_counter() - t) / 20 * 1e3
        if any([h.path for h in a[0]] != [h.path for h in b] for a, b in zip(single, hits[:20])):
            raise RuntimeError("one query at a time ranks differently from batched queries")
    position = {str(p): i for i, p in enumerate(paths)}
    found = torch.tensor([[position[h.path] for h in row] for row in hits])
    images = clip.embed_images(paths)  # the exact computation, on the same unit vectors
    sim = queries @ images.T
    exact_top = sim.topk(10, dim=1).indices
    out = {"images": len(paths), "queries": len(captions), "add_s": round(add_s, 1),
           "add_images_per_s": round(len(paths) / add_s, 1), "batched_query_ms": round(search_s / len(captions) * 1e3, 2),
           "single_query_ms": round(one_ms, 1), "identical_top10": round(float((found == exact_top).all(1).float().mean()), 4)}
    for k in (1, 5, 10):
        via_index = (found[:, :k] == owner[:, None]).any(1).float().mean().item()
        own = sim.gather(1, owner[:, None])
        exact = ((sim > own).sum(1) < k).float().mean().item()  # rank of the own image (ties: no penalty)
        out[f"t2i_r{k}"] = {"index": round(via_index, 4), "exact": round(exact, 4), "chance": round(k / len(paths), 4)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", required=True, help="CLIP folder (or a model folder carrying clip/)")
    ap.add_argument("--data", type=Path, default=data_dir("flickr8k"))
    ap.add_argument("--limit", type=int, default=None, help="first N dev records only")
    ap.add_argument("--workdir", type=Path, default=None, help="where the index is built (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from vlm.clip import Clip

    torch.set_num_threads(1)
    records = [json.loads(x) for x in (args.data / "dev.jsonl").read_text().splitlines() if x.strip()]
    records = records[:args.limit] if args.limit else records
    clip = Clip.load(args.clip)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clip-uses-"))
    result = {"clip": clip.describe(), "records": len(records), "zero_shot": zero_shot(clip, records, args.data),
              "search": search(clip, records, args.data, workdir)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    mismatch = [k for k, v in result["search"].items() if k.startswith("t2i") and abs(v["index"] - v["exact"]) > 1e-9]
    if mismatch:
        print(f"index recall differs from the exact computation at {mismatch}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
