"""``vlm train stage0``: flags map one-to-one onto :class:`Stage0Config` (tower fields as --tower-*)."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

HELP = "train vlm's own CLIP ViT vision tower (teacher distillation + caption contrastive), select on dev"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _arg_type(default):
    if isinstance(default, bool):
        return _bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


_OPTIONAL_TYPES = {"init_tower": str, "cache_dir": str, "time_budget_min": float, "threads": int, "train_limit": int,
                   "dev_limit": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm.config import TowerPreset

    from .config import Stage0Config
    from .data import AugmentConfig

    base = Stage0Config()
    parser.add_argument("--config", help="JSON file with Stage0Config fields (flags given override it)")
    for f in fields(Stage0Config):
        if f.name in ("tower", "augment"):
            continue
        default = getattr(base, f.name)
        kind = _optional(_OPTIONAL_TYPES[f.name]) if f.name in _OPTIONAL_TYPES else _arg_type(default)
        flag = {"nargs": "?", "const": True} if isinstance(default, bool) else {}  # `--resume` = `--resume true`
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                            help=f"(default: {default})", **flag)
    for f in fields(TowerPreset):
        parser.add_argument(f"--tower-{f.name.replace('_', '-')}", dest=f"tower__{f.name}", type=int, default=None,
                            help=f"(default: {getattr(base.tower, f.name)})")
    for f in fields(AugmentConfig):
        if f.name == "ratio":
            continue
        parser.add_argument(f"--aug-{f.name.replace('_', '-')}", dest=f"augment__{f.name}", type=float,
                            default=None, help=f"(default: {getattr(base.augment, f.name)})")


def config_from_args(args: argparse.Namespace):
    from pathlib import Path

    from .config import Stage0Config

    base: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        base = json.loads(path.read_text())
    cfg = Stage0Config.from_dict(base)
    for key, value in vars(args).items():
        if value is None or key in ("config", "command", "stage", "_run"):
            continue
        if "__" in key:
            group, name = key.split("__", 1)
            if hasattr(cfg, group):
                setattr(getattr(cfg, group), name, value)
        elif hasattr(cfg, key):
            setattr(cfg, key, value)
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from .loop import train

    cfg = config_from_args(args)
    summary = train(cfg)
    best = summary["best"] or {}
    print(json.dumps({"out_dir": summary["out_dir"], "best": best, "teacher_probe": summary["teacher_probe"],
                      "wall_s": summary["wall_s"], "peak_rss_mib": summary["peak_rss_mib"]}, indent=2))
    return 0
