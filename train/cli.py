"""``vlm train STAGE ...``: one module per stage in :data:`STAGES` (``HELP``, ``add_arguments``, ``run``).

Also runnable on its own, which is how distributed launchers start it::

    accelerate launch --num_processes 2 --cpu -m train.cli stage1 --data ... --out ...
    torchrun --nproc-per-node 2 -m train.cli stage1 ...
"""
from __future__ import annotations

import argparse
import importlib
import sys

STAGES: dict[str, str] = {
    "stage1": "train.stage1",
    "stage2": "train.stage2",
}

HELP = "train a model: " + ", ".join(STAGES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, module_name in STAGES.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_stage_run=module.run)


def run(args) -> int:
    return int(args._stage_run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlm train", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"vlm train {args.stage}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
