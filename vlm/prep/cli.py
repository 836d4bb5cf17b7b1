"""``vlm prep ...``: build LLaVA training files from the real data sets, or check existing ones.

- ``vlm prep flickr8k --src ../shared/data/flickr8k --out DIR``
- ``vlm prep sroie --src ../shared/data/sroie --out DIR [--ocr rapidocr|dataset]``
- ``vlm prep qa --src ../shared/data/flickr8k --out DIR``: short-answer questions from the captions (stage 2)
  and the dev VQA file for ``vlm eval vqa``.
- ``vlm prep textonly --model smollm2-135m-instruct --out DIR``: text-only chats answered by the base LLM
  (stage 2) and a text-only dev set with reference answers.
- ``vlm prep mix PATH[:N] ... --out FILE``: sample and shuffle record files into one training file.
- ``vlm prep check FILE [FILE ...]``: count bad records in LLaVA files by reason.

Each prints a summary (bad records by reason) and writes it as JSON beside the output. A bad record is
counted and skipped; ``--strict`` makes the first one fatal with a clear error instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "prepare LLaVA training data (flickr8k, sroie, qa, textonly) or check record files"


def _common(p: argparse.ArgumentParser, limit_help: str) -> None:
    p.add_argument("--src", required=True, type=Path, help="source data folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--seed", type=int, default=0, help="seed for prompt choice and sampling (default 0)")
    p.add_argument("--limit", type=int, default=None, help=limit_help)
    p.add_argument("--strict", action="store_true", help="stop with an error at the first bad record")
    p.add_argument("--absolute-paths", action="store_true",
                   help="write absolute image paths (default: relative to the output file's folder)")
    p.add_argument("--no-decode", action="store_true", help="only check that images exist; do not decode them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="prep_command", required=True, metavar="SOURCE")
    fl = sub.add_parser("flickr8k", help="Flickr8k -> stage-0 pairs, stage-1 captions, stage-2 instructions")
    _common(fl, "use at most the first N images of each split (quick runs)")
    fl.add_argument("--stage1-captions", type=int, default=5,
                    help="captions per image used for stage 1 (1-5; default 5 = every caption)")
    fl.add_argument("--raw-captions", action="store_true",
                    help="keep captions byte for byte (default: tidy tokeniser spacing, capital, final period)")
    sr = sub.add_parser("sroie", help="SROIE -> stage-1 reading and stage-2 extraction records, vendor split")
    _common(sr, "use at most the first N receipts, before the vendor split (quick runs)")
    sr.add_argument("--ocr", choices=["rapidocr", "dataset"], default="rapidocr",
                    help="OCR text in extraction prompts: rapidocr = same engine as inference (slow the first "
                         "time, cached); dataset = the data's human OCR lines (fast, cleaner than inference)")
    sr.add_argument("--val-fraction", type=float, default=0.15, help="share of receipts held out (default 0.15)")
    sr.add_argument("--max-val-group", type=int, default=12,
                    help="vendor groups bigger than this always stay in train (default 12)")
    sr.add_argument("--questions", type=int, default=2, help="single-field questions per receipt (0-4, default 2)")
    sr.add_argument("--transcribe", action="store_true",
                    help="add one OCR-grounded 'what does it say?' record per receipt (answer: the OCR text)")
    sr.add_argument("--no-extraction", dest="extraction", action="store_false",
                    help="leave the extraction records (OCR text -> JSON) out of stage 2: questions and "
                         "transcriptions only, for a chat-only mix")
    sr.add_argument("--swaps", type=int, default=0,
                    help="vendor-swapped extraction records per train receipt: another vendor's company and "
                         "address rows put into the receipt's OCR text (default 0)")
    qa = sub.add_parser("qa", help="Flickr8k captions -> short-answer questions (stage 2) and dev VQA file")
    _common(qa, "use at most the first N images of each split (quick runs)")
    qa.add_argument("--turns", type=int, default=4, help="questions per training record (default 4)")
    qa.add_argument("--suffix-share", type=float, default=0.75,
                    help="share of training questions followed by the short-answer instruction (default 0.75)")
    to = sub.add_parser("textonly", help="text-only chats answered by the base LLM (stage 2) + text-only dev set")
    to.add_argument("--model", default="smollm2-135m-instruct", help="the base LLM that answers (default: %(default)s)")
    to.add_argument("--out", required=True, type=Path, help="output folder (created)")
    to.add_argument("--max-new-tokens", type=int, default=96, help="answer length limit (default 96)")
    to.add_argument("--batch-size", type=int, default=16)
    to.add_argument("--limit", type=int, default=None, help="answer only the first N training prompts")
    to.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    to.add_argument("--quiet", action="store_true", help="no progress bar")
    mx = sub.add_parser("mix", help="mix record files (PATH[:N] samples N) into one shuffled training file")
    mx.add_argument("sources", nargs="+", metavar="PATH[:N]")
    mx.add_argument("--out", required=True, type=Path, help="output JSON file")
    mx.add_argument("--seed", type=int, default=0)
    mx.add_argument("--absolute-paths", action="store_true")
    ck = sub.add_parser("check", help="check LLaVA record files and count bad records by reason")
    ck.add_argument("files", nargs="+", type=Path)
    ck.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    ck.add_argument("--strict", action="store_true", help="stop with an error at the first bad record")


def _print_summary(summary: dict, summary_path: Path | None) -> None:
    shown = {k: summary[k] for k in ("kept", "bad", "bad_total", "receipts", "vendor_groups", "seconds") if k in summary}
    print(json.dumps(shown, indent=2))
    for reason, examples in summary.get("bad_examples", {}).items():
        for example in examples:
            print(f"  bad ({reason}): {example}", file=sys.stderr)
    if summary_path is not None:
        print(f"summary written to {summary_path}")


def run(args: argparse.Namespace) -> int:
    if args.prep_command == "flickr8k":
        from .flickr8k import Flickr8kPrepConfig, prepare_flickr8k

        cfg = Flickr8kPrepConfig(
            src=args.src, out=args.out, seed=args.seed, limit=args.limit, stage1_captions=args.stage1_captions,
            raw_captions=args.raw_captions, absolute_paths=args.absolute_paths, decode_images=not args.no_decode,
            strict=args.strict,
        )
        _print_summary(prepare_flickr8k(cfg, progress=not args.quiet), cfg.out / "flickr8k_summary.json")
        return 0
    if args.prep_command == "sroie":
        from .sroie import SroiePrepConfig, prepare_sroie

        cfg = SroiePrepConfig(
            src=args.src, out=args.out, ocr=args.ocr, seed=args.seed, limit=args.limit,
            val_fraction=args.val_fraction, max_val_group=args.max_val_group, questions=args.questions, swaps=args.swaps,
            transcribe=args.transcribe, extraction=args.extraction,
            absolute_paths=args.absolute_paths, decode_images=not args.no_decode, strict=args.strict,
        )
        _print_summary(prepare_sroie(cfg, progress=not args.quiet), cfg.out / "sroie_summary.json")
        return 0
    if args.prep_command == "qa":
        from .qa import QAPrepConfig, prepare_qa

        cfg = QAPrepConfig(
            src=args.src, out=args.out, seed=args.seed, limit=args.limit, turns=args.turns,
            suffix_share=args.suffix_share, absolute_paths=args.absolute_paths, decode_images=not args.no_decode,
            strict=args.strict,
        )
        summary = prepare_qa(cfg, progress=not args.quiet)
        _print_summary(summary, cfg.out / "flickr8k_qa_summary.json")
        print(json.dumps({"questions_by_type": summary["questions_by_type"],
                          "yes_no_answers": summary["yes_no_answers"]}, indent=2))
        return 0
    if args.prep_command == "textonly":
        from .textonly import TextOnlyConfig, prepare_textonly

        cfg = TextOnlyConfig(model=args.model, out=args.out, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, limit=args.limit, threads=args.threads)
        summary = prepare_textonly(cfg, progress=not args.quiet)
        _print_summary(summary, cfg.out / "textonly_summary.json")
        print(json.dumps({k: summary[k] for k in ("records", "dev_questions", "generated", "cached",
                                                  "generation_seconds")}, indent=2))
        return 0
    if args.prep_command == "mix":
        from .mix import MixConfig, MixSource, mix

        cfg = MixConfig([MixSource.parse(s) for s in args.sources], args.out, args.seed, args.absolute_paths)
        print(json.dumps(mix(cfg), indent=2))
        return 0
    from .io import checked_records
    from vlm.records import RecordAccounting

    acc = RecordAccounting(strict=args.strict)
    for path in args.files:
        for _ in checked_records(path, decode_images=args.decode, accounting=acc):
            pass
    summary = acc.summary()
    _print_summary(summary, None)
    return 1 if summary["bad_total"] else 0
