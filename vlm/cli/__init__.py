"""The ``vlm`` command. Each subcommand lives in its own module with ``HELP``, ``add_arguments`` and ``run``.

Modules are imported to build the parser, so they keep heavy imports (torch, transformers) inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "bench": "vlm.cli.bench",
    "ask": "vlm.cli.ask",
    "info": "vlm.cli.info",
    "eval": "vlm.cli.eval",
    "extract": "vlm.cli.extract",
    "ocr": "vlm.cli.ocr",
    "classify": "vlm.cli.classify",
    "index": "vlm.cli.index",
    "export": "vlm.train.export",
    "train": "vlm.train.cli",
    "serve": "vlm.cli.serve",
    "prep": "vlm.prep.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description="LLaVA-style vision-language assistant")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
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

