"""Calibrate the policy score (``vlm.policy``) on Flickr8k **train** photos (never dev): where should a policy's
default threshold be, and which template and neutral set separate best?

Probe policies: the ten labels of :mod:`vlm.eval.retrieval_zeroshot` ("a dog", "water", "a bike", ...). For
each probe, the *positives* are the photos at least 3 of whose 5 captions mention it, the *negatives* those
none of whose captions do. Every photo of the sample is embedded once; each candidate (template x neutral
set) scores every probe on every photo. The threshold reported for a candidate is the one that blocks
``--fpr`` (default 5%) of the negatives pooled over all probes; at it, the share of positives blocked (TPR)
per probe and pooled. The candidate with the highest pooled TPR is the recommendation; ``vlm.policy`` ships
its template, neutral set and threshold (rounded to 2 decimals).

Usage (one core):  python -m vlm.eval.policy_calibration --clip vlm-tiny [--limit 2000] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vlm.paths import data_dir

SCENES = ("something", "a person", "people", "a street", "a room", "a landscape", "a building", "the sky",
          "an object", "a crowd")
CANDIDATES = {
    "photo-template, scene neutrals": ("a photo of {}.", SCENES),
    "bare template, scene neutrals": ("{}", SCENES),
    "bare template, caption neutrals": ("{}", ("a man", "a woman", "a person", "people", "a child", "a girl",
                                               "a boy", "a crowd", "a building", "a room")),
}


def calibrate(clip, records, data: Path, fpr: float) -> dict:
    from vlm.eval.retrieval_zeroshot import LABELS, mentions
    from vlm.policy import Policy, PolicyCheck, PolicyConfig

    t = time.perf_counter()
    vectors = clip.embed_images([data / r["image"] for r in records])
    embed_s = time.perf_counter() - t
    counts = [mentions(r["captions"]) for r in records]
    probes = {name: prompt for name, (prompt, _) in LABELS.items()}
    pos = {n: torch.tensor([c[n] >= 3 for c in counts]) for n in probes}
    neg = {n: torch.tensor([c[n] == 0 for c in counts]) for n in probes}
    out = {"photos": len(records), "embed_images_per_s": round(len(records) / embed_s, 1), "fpr": fpr,
           "positives": {n: int(p.sum()) for n, p in pos.items()},
           "negatives": {n: int(m.sum()) for n, m in neg.items()}, "candidates": {}}
    for label, (template, neutral) in CANDIDATES.items():
        config = PolicyConfig(tuple(Policy(p) for p in probes.values()), neutral, template)
        scores = PolicyCheck(clip, config).score_vectors(vectors)  # (N, probes)
        pooled_neg = torch.cat([scores[neg[n], i] for i, n in enumerate(probes)])
        threshold = float(torch.quantile(pooled_neg, 1 - fpr))
        tpr = {n: round(float((scores[pos[n], i] >= threshold).float().mean()), 3) if pos[n].any() else None
               for i, n in enumerate(probes)}
        pooled_pos = torch.cat([scores[pos[n], i] for i, n in enumerate(probes)])
        out["candidates"][label] = {
            "template": template, "neutral": list(neutral), "threshold": round(threshold, 4),
            "pooled_tpr": round(float((pooled_pos >= threshold).float().mean()), 4), "tpr": tpr,
            "fpr_per_probe": {n: round(float((scores[neg[n], i] >= threshold).float().mean()), 3)
                              for i, n in enumerate(probes)}}
    best = max(out["candidates"], key=lambda k: out["candidates"][k]["pooled_tpr"])
    out["recommended"] = {"candidate": best, "threshold": round(out["candidates"][best]["threshold"], 2)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", default="vlm-tiny", help="CLIP folder or a model carrying clip/ (default vlm-tiny)")
    ap.add_argument("--data", type=Path, default=data_dir("flickr8k"))
    ap.add_argument("--limit", type=int, default=2000, help="train photos, evenly spaced (default 2000)")
    ap.add_argument("--fpr", type=float, default=0.05, help="share of negatives blocked at the threshold")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from vlm.clip import Clip

    torch.set_num_threads(1)
    records = [json.loads(x) for x in (args.data / "train.jsonl").read_text().splitlines() if x.strip()]
    step = max(1, len(records) // args.limit) if args.limit else 1
    records = records[::step][:args.limit or None]
    result = {"clip": str(args.clip), "split": "train", **calibrate(Clip.load(args.clip), records, args.data, args.fpr)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
