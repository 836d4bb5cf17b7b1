"""``vlm train {stage1,stage2,clip}``: one sub-command per training stage, and ``clip`` (a CLIP text tower
for the locked image tower, LiT).

STAGES maps a stage name to a module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
(the same contract as ``vlm.cli.COMMANDS``); heavy imports stay inside ``run``.

A stage that cannot write its checkpoint or output (a full disk, a quota) ends with one line naming the
problem and the way back (``--resume`` from the last intact checkpoint) and exit status 1, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

HELP = ("train a stage: stage1 (projector alignment), stage2 (instruction tuning); "
        "clip (a text tower for the locked image tower, LiT)")

STAGES: dict[str, str] = {
    "stage1": "vlm.train.stage1",
    "stage2": "vlm.train.stage2",
    "clip": "vlm.train.lit.cli",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, module_name in STAGES.items():
        module = importlib.import_module(module_name)
        stage = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(stage)
        stage.set_defaults(_stage_run=module.run)


def run(args: argparse.Namespace) -> int:
    from .checkpoint import DISK_FULL, CheckpointWriteError

    try:
        return int(args._stage_run(args) or 0)
    except CheckpointWriteError as exc:
        print(f"vlm train {args.stage}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        print(f"vlm train {args.stage}: error: could not write {exc.filename or 'a file'}: {exc.strerror}; "
              f"free some space and rerun (with --resume to continue from the last checkpoint)", file=sys.stderr)
        return 1
