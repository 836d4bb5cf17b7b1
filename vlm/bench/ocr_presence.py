"""How often OCR-grounded chat's ``auto`` rule (:func:`vlm.grounding.has_text`) grounds photos and receipts.

``python -m vlm.bench.ocr_presence --flickr 100 --sroie 100 [--sroie-split runs/sroie/sroie_split.json]``
runs :func:`vlm.ocr.run_ocr` (cached) on the first N Flickr8k training photos and the first N SROIE receipts
(the training side of ``--sroie-split``, the split file ``vlm prep sroie`` writes, when given) and prints, for
the default rule and for "any OCR line at all", how many of each were grounded, with the evidence
(confident lines, letters and digits) closest to the threshold. ``--out FILE`` keeps one JSON line per image.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm.grounding import GroundingOptions, has_text, text_evidence
from vlm.ocr import run_ocr
from vlm.paths import data_dir


def images(data: Path, n_flickr: int, n_sroie: int, split: Path | None) -> dict[str, list[Path]]:
    flickr = [data / "flickr8k" / json.loads(line)["image"]
              for line in (data / "flickr8k" / "train.jsonl").read_text().splitlines()[:n_flickr]]
    rows = [json.loads(line) for line in (data / "sroie" / "train.jsonl").read_text().splitlines()]
    if split is not None:
        train = set(json.loads(split.read_text())["train_ids"])
        rows = [r for r in rows if r["id"] in train]
    return {"flickr8k photos": flickr, "SROIE receipts": [data / "sroie" / r["image"] for r in rows[:n_sroie]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=data_dir())
    p.add_argument("--flickr", type=int, default=100)
    p.add_argument("--sroie", type=int, default=100)
    p.add_argument("--sroie-split", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    opts = GroundingOptions()
    sink = args.out.open("w") if args.out else None
    for kind, paths in images(args.data, args.flickr, args.sroie, args.sroie_split).items():
        evidence, grounded, any_line = [], 0, 0
        for path in paths:
            lines = run_ocr(path)
            n, chars = text_evidence(lines, opts)
            grounded += has_text(lines, opts)
            any_line += bool(lines)
            evidence.append((n, chars))
            if sink:
                sink.write(json.dumps({"kind": kind, "image": str(path), "lines": len(lines), "confident_lines": n,
                                       "confident_chars": chars, "grounded": has_text(lines, opts)}) + "\n")
        print(f"{kind}: {len(paths)}; any OCR line {any_line}; grounded by auto ({opts.min_lines} lines, "
              f"{opts.min_chars} chars, score >= {opts.min_score}) {grounded}; evidence min {min(evidence)} "
              f"max {max(evidence)}")
    if sink:
        sink.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
