"""Command-line arguments shared by ``vlm train stage1`` and ``stage2`` -> :class:`vlm.train.config.TrainConfig`."""
from __future__ import annotations

import argparse

from .config import TrainConfig


def add_common(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    a = parser.add_argument
    a("--data", required=True, help="LLaVA-format JSON (list of records) or JSONL")
    a("--image-root", default=None, help="folder relative image paths start from (default: the JSON's folder)")
    a("--model", required=True, help="starting model folder (see the stage's help)")
    a("--out", required=True, help="output folder (checkpoints, metrics, final model)")
    a("--epochs", type=float, default=defaults.epochs)
    a("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides --epochs)")
    a("--limit", type=int, default=None, help="use only the first N records")
    a("--batch-size", type=int, default=defaults.batch_size, help="per process, per micro-batch")
    a("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per optimizer step")
    a("--lr", type=float, default=defaults.lr)
    a("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    a("--weight-decay", type=float, default=defaults.weight_decay)
    a("--max-length", type=int, default=defaults.max_length, help="skip longer examples (tokens, images included)")
    a("--no-group-by-length", dest="group_by_length", action="store_false")
    a("--gradient-checkpointing", action="store_true")
    a("--bf16", action="store_true", help="bf16 autocast (pays off on CPUs with AMX and on GPUs)")
    a("--dtype", default=defaults.dtype, choices=["float32", "bfloat16"],
      help="dtype of the frozen weights (trainable ones stay float32); bfloat16 is ~3x faster on AMX CPUs")
    a("--threads", type=int, default=None,
      help="torch threads per process (on a busy shared CPU, 1 avoids thread oversubscription)")
    a("--seed", type=int, default=defaults.seed)
    a("--save-every", type=int, default=0, help="checkpoint every N optimizer steps")
    a("--keep-checkpoints", type=int, default=defaults.keep_checkpoints)
    a("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    a("--cache-dir", default=None, help="feature cache root (default: $VLM_CACHE/features)")
    a("--no-cache", dest="use_cache", action="store_false", help="keep tower features in memory only")
    a("--feature-batch-size", type=int, default=defaults.feature_batch_size)


FIELDS = ("data", "image_root", "model", "out", "epochs", "max_steps", "limit", "batch_size", "grad_accum", "lr",
          "warmup_ratio", "weight_decay", "max_length", "group_by_length", "gradient_checkpointing", "bf16",
          "dtype", "threads", "seed", "save_every", "keep_checkpoints", "resume", "cache_dir", "use_cache",
          "feature_batch_size")


def to_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    for name in FIELDS:
        setattr(base, name, getattr(args, name))
    return base.validate()
