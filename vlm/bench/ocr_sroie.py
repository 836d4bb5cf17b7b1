"""How fast rapidocr reads a SROIE receipt here, and how often each key field appears verbatim in its text.

The verbatim rate (ground-truth value found in the OCR text after whitespace normalisation) bounds the
exact-match F1 an OCR-grounded extractor can reach. Usage:
    python vlm/bench/ocr_sroie.py [--n 50] [--data ../shared/data/sroie] [--no-cache]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vlm.extract.prompts import format_ocr
from vlm.ocr import run_ocr

FIELDS = ("company", "date", "address", "total")


def norm(s: str) -> str:
    return " ".join(s.split())


def sroie_text(path: Path) -> str:
    return "\n".join(line.split(",", 8)[8] for line in path.read_text(errors="replace").splitlines() if line.count(",") >= 8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sroie"))
    ap.add_argument("--no-cache", action="store_true", help="time the OCR engine itself, not the cache")
    args = ap.parse_args()
    data = Path(args.data)
    records = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    step = max(1, len(records) // args.n)
    records = records[::step][: args.n]
    run_ocr(data / records[0]["image"], cache=False)  # load the models first
    times, hits, hits_ci, ref_hits, counts = [], {f: 0 for f in FIELDS}, {f: 0 for f in FIELDS}, {f: 0 for f in FIELDS}, {f: 0 for f in FIELDS}
    for rec in records:
        t = time.perf_counter()
        lines = run_ocr(data / rec["image"], cache=not args.no_cache)
        times.append(time.perf_counter() - t)
        text = norm(format_ocr(lines))
        ref = norm(sroie_text(data / rec["ocr"]))
        for f in FIELDS:
            value = rec["entities"].get(f)
            if not value:
                continue
            counts[f] += 1
            v = norm(value)
            hits[f] += v in text
            hits_ci[f] += v.lower() in text.lower()
            ref_hits[f] += v in ref
    print(f"receipts: {len(records)}  OCR s/receipt: mean {statistics.mean(times):.2f}  "
          f"median {statistics.median(times):.2f}  max {max(times):.2f}")
    print(f"{'field':8s} verbatim  case-insensitive  (SROIE's own OCR transcripts)")
    for f in FIELDS:
        n = counts[f] or 1
        print(f"{f:8s} {hits[f] / n:8.2f}  {hits_ci[f] / n:16.2f}  {ref_hits[f] / n:8.2f}")
    allf = sum(hits.values()) / max(1, sum(counts.values()))
    print(f"all      {allf:8.2f}")


if __name__ == "__main__":
    main()
