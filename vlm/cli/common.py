"""Arguments shared by subcommands."""
from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vlm-tiny", help="shipped name or model folder (default: vlm-tiny)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="weights dtype")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    add_decoding_arguments(parser)


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-beams", type=int, default=None,
                        help="beam search width (default: 1 = greedy, except `vlm eval captions`: 3)")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="> 1 discourages tokens already in the prompt or answer (default: off)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="never repeat an n-gram of this many tokens within the answer (default: off)")


def generation_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        num_beams=args.num_beams,
    )


def load_model(args: argparse.Namespace):
    from vlm import VLM

    return VLM.load(args.model, dtype=args.dtype)


def add_ocr_engine_argument(parser: argparse.ArgumentParser) -> None:
    from vlm.ocr import DEFAULT_ENGINE, ENGINES

    parser.add_argument("--ocr-engine", default=None, choices=ENGINES,
                        help=f"OCR engine: {', '.join(ENGINES)} (both engines, lines merged; default: {DEFAULT_ENGINE})")
