"""``vlm train clip``: a CLIP whose text tower is trained against a locked pretrained image tower (LiT).

Every :class:`vlm.train.lit.config.LitConfig` field is a flag (``image_layer`` -> ``--image-layer``) whose default
is the field's, through :mod:`vlm.flags`, as for stages 1 and 2.
"""
from __future__ import annotations

import argparse
import json

from vlm import flags

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_flags(parser, LitConfig(), help=_HELP, choices=_CHOICES)


def to_config(args: argparse.Namespace) -> LitConfig:
    return flags.apply(args, LitConfig()).validate()


def run(args: argparse.Namespace) -> int:
    from .loop import train

    summary = train(to_config(args))
    print(json.dumps({k: summary[k] for k in ("out_dir", "model_folder", "best", "steps", "train_s")}, indent=2))
    return 0
