"""The ``vlm`` command. Each subcommand lives in its own module with ``HELP``, ``add_arguments`` and ``run``.

The modules are imported (plainly: the import graph shows what the CLI wires) to build the parser, so they keep
heavy imports (torch, transformers) inside ``run``.
"""
from __future__ import annotations

import argparse
import sys

from vlm.prep import cli as prep_cli
from vlm.train import cli as train_cli
from vlm.train import export

from . import ask, bench, classify, eval, extract, index, info, ocr, serve

COMMANDS = {
    "bench": bench, "ask": ask, "info": info, "eval": eval, "extract": extract, "ocr": ocr, "classify": classify,
    "index": index, "export": export, "train": train_cli, "serve": serve, "prep": prep_cli,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description="LLaVA-style vision-language assistant")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        print(f"vlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

