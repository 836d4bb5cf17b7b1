"""``vlm train clip``: a CLIP whose text tower is trained against a locked pretrained image tower (LiT).

Every :class:`vlm.train.lit.config.LitConfig` field is a flag (``image_layer`` -> ``--image-layer``) whose default
is the field's; booleans take ``--flag`` / ``--no-flag``; optional fields accept ``none``. ``to_config`` maps
the parsed flags back onto the dataclass, as ``vlm/train/args.py`` does for stages 1 and 2.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import fields

from .config import IMAGE_FEATURES, TEXT_TOWERS, LitConfig

HELP = "train a CLIP text tower against the locked image tower (LiT), select on dev retrieval"

_HELP = {
    "data_dir": "folder with train.jsonl and dev.jsonl ({image, captions})",
    "out_dir": "output folder: the model (stock VisionTextDualEncoderModel), checkpoints, metrics",
    "cache_dir": "where the locked tower's outputs are cached (default: $VLM_CACHE/features/lit)",
    "cache": "cache the locked tower's outputs on disk (--no-cache: in memory, this run only)",
    "vision": "registered tower name or tower folder",
    "image_layer": "cut the tower to this many layers (0: all); the image feature is that layer's normed CLS",
    "image_features": f"{' or '.join(IMAGE_FEATURES)}; cls+mean is a measurement only (no stock class)",
    "flip": "train on plain and mirrored views, evaluate on their average",
    "unlock_vision": "train the image tower too (no cache; meant for GPUs)",
    "text_tower": f"{' or '.join(TEXT_TOWERS)}; smollm2-frozen is a measurement only (no stock class)",
    "embed_init": "smollm2 (token embeddings from SmolLM2's, PCA) or random",
    "llm_layer": "smollm2-frozen: pooled hidden_states index (0: token embeddings)",
    "llm_sif_a": "smollm2-frozen: SIF weight a (none: plain mean)",
    "epochs": "passes over all training captions",
    "max_steps": "stop after N optimizer steps (overrides --epochs)",
    "eval_every": "steps between dev evaluations (0: every epoch)",
    "save_every": "steps between checkpoints (0: at each evaluation)",
    "resume": "continue from the latest checkpoint in --out-dir",
    "bf16": "autocast the trained towers to bf16 (none: where bf16 is fast: AMX CPUs, bf16 GPUs)",
    "feature_bf16": "compute the cached image tower outputs under bf16 (none: where bf16 is fast)",
    "threads": "torch threads (on a busy shared CPU, fewer avoids oversubscription)",
}


_CHOICES = {"image_features": IMAGE_FEATURES, "text_tower": TEXT_TOWERS, "embed_init": ("smollm2", "random")}


def _kind(field) -> tuple[type, bool]:
    """(value type, optional) of a dataclass field."""
    hint = typing.get_type_hints(LitConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0], True) if args else (hint, False)


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base = LitConfig()
    for f in fields(LitConfig):
        kind, optional = _kind(f)
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(base, f.name)
        help_text = f"{_HELP.get(f.name, f.name.replace('_', ' '))} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_optional(kind) if optional else kind, default=default,
                                choices=_CHOICES.get(f.name), help=help_text)


def to_config(args: argparse.Namespace) -> LitConfig:
    cfg = LitConfig()
    for f in fields(LitConfig):
        setattr(cfg, f.name, getattr(args, f.name))
    return cfg.validate()


def run(args: argparse.Namespace) -> int:
    from .loop import train

    summary = train(to_config(args))
    print(json.dumps({k: summary[k] for k in ("out_dir", "model_folder", "best", "steps", "train_s")}, indent=2))
    return 0
