"""``vlm eval ocr``: OCR engines on SROIE (per-field ceilings and speed, :mod:`vlm.eval.ocr_ceiling`).

Writes ``--out DIR/report.json`` (per engine: ceilings per field and overall, timings, the settings used) and
prints the Markdown table docs/ocr.md holds. ``--data`` is a SROIE JSONL (``vlm prep sroie`` writes
``sroie_train.jsonl`` / ``sroie_val.jsonl``) or a folder holding ``train.jsonl``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path


def _data_file(data: str) -> Path:
    path = Path(data)
    if path.is_dir():
        if not (path / "train.jsonl").is_file():
            raise FileNotFoundError(f"--data folder {path} holds no train.jsonl")
        return path / "train.jsonl"
    return path


def _engines(text: str) -> list[str]:
    from vlm.ocr import check_engine

    names = [e.strip() for e in text.split(",") if e.strip()]
    if not names:
        raise ValueError("--engines is empty: name at least one of rapidocr, tesseract, both")
    return [check_engine(e) for e in names]


def _configs(args):
    from vlm.ocr_merge import MergeConfig
    from vlm.ocr_tesseract import TesseractConfig

    tess = TesseractConfig()
    for flag, name in (("tesseract_psm", "psm"), ("tesseract_scale", "scale"), ("tesseract_binarise", "binarise")):
        if getattr(args, flag) is not None:
            tess = replace(tess, **{name: getattr(args, flag)})
    merge = MergeConfig()
    if args.merge_conflicts is not None:
        merge = replace(merge, keep_conflicts=args.merge_conflicts)
    if args.merge_primary is not None:
        merge = replace(merge, primary=args.merge_primary)
    return tess, merge


def run_ocr_eval(args) -> int:
    from vlm.eval.ocr_ceiling import OcrEvalConfig, OcrReport, evaluate_engine
    from vlm.eval.records import load_eval_records

    if args.every < 1:
        raise ValueError(f"--every must be at least 1, got {args.every}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    engines = _engines(args.engines)
    path = _data_file(args.data)
    records = load_eval_records(path, ("image", "entities"))[:: args.every][: args.limit]
    tess, merge = _configs(args)
    report = OcrReport(str(path.resolve()), settings={"receipts": len(records), "every": args.every,
                                                      "timed": args.timed, "tesseract": asdict(tess),
                                                      "merge": asdict(merge)})
    for engine in engines:
        config = OcrEvalConfig(engine, timed=min(args.timed, len(records)), tesseract=tess, merge=merge)
        report.engines[engine] = evaluate_engine(records, config, progress=args.progress)
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"ocr-{path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"ocr: {len(records)} receipts from {path}")
    print(report.table())
    print(f"report: {out / 'report.json'}")
    return 0
