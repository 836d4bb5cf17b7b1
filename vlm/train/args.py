"""Flags shared by ``vlm train stage1`` and ``stage2``: fields of :class:`vlm.train.config.TrainConfig`, through
:mod:`vlm.flags` (the one way vlm maps flags to configs)."""
from __future__ import annotations

import argparse

from vlm import flags

from .config import TrainConfig

COMMON = ("data", "image_root", "model", "out", "epochs", "max_steps", "limit", "batch_size", "grad_accum", "lr",
          "warmup_ratio", "weight_decay", "max_length", "group_by_length", "gradient_checkpointing", "bf16",
          "dtype", "threads", "seed", "save_every", "keep_checkpoints", "resume", "cache_dir", "use_cache",
          "feature_batch_size")

HELP = {
    "data": "LLaVA-format JSON (list of records) or JSONL",
    "image_root": "folder relative image paths start from (default: the JSON's folder)",
    "model": "starting model folder (see the stage's help)",
    "out": "output folder (checkpoints, metrics, final model)",
    "max_steps": "stop after N optimizer steps (overrides --epochs)",
    "limit": "use only the first N records",
    "batch_size": "per process, per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "max_length": "skip longer examples (tokens, images included)",
    "group_by_length": "batch examples of similar length together",
    "bf16": "bf16 autocast (pays off on CPUs with AMX and on GPUs)",
    "dtype": "dtype of the frozen weights (trainable ones stay float32); bfloat16 is ~3x faster on AMX CPUs",
    "threads": "torch threads per process (on a busy shared CPU, 1 avoids thread oversubscription)",
    "save_every": "checkpoint every N optimizer steps (0: only at the end)",
    "resume": "continue from the latest checkpoint in --out",
    "cache_dir": "feature cache root (default: $VLM_CACHE/features)",
    "use_cache": "cache tower features on disk (--no-cache: in memory only)",
    "vision": "vision tower: a registered name (dinov2-vits14), a folder, or 'preset' for a fresh TowerPreset "
              "tower; with it, --model is the LLM (registered name or folder) and a new llava model is composed. "
              "Without it, --model is a llava folder or shipped name",
    "image_size": "with --vision: the tower's input size in pixels, a multiple of its patch size (default: the "
                  "tower's own)",
    "vision_feature_layer": "with --vision: the tower hidden state fed to the projector (default -2; several are "
                            "concatenated)",
    "projector_lr": "stage 2: the projector's learning rate (none: same as --lr)",
}


def add_common(parser: argparse.ArgumentParser, defaults: TrainConfig, extra: tuple[str, ...] = ()) -> None:
    """The common flags plus the stage's ``extra`` fields."""
    flags.add_flags(parser, defaults, help=HELP, names={"use_cache": "cache"}, required=("data", "model", "out"),
                    choices={"dtype": ["float32", "bfloat16"]}, only=COMMON + extra)


def to_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    return flags.apply(args, base).validate()
