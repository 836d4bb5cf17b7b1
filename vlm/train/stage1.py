"""Stage 1: feature alignment. Only the projector trains (LLaVA-1.5: lr 1e-3, cosine, 3% warmup, 1 epoch)."""
from __future__ import annotations

from .args import add_common, to_config
from .config import stage1_defaults

HELP = "stage 1: train the projector on image-caption data (tower and LLM frozen)"
EXTRA = ("vision", "image_size", "vision_feature_layer")


def add_arguments(parser) -> None:
    add_common(parser, stage1_defaults(), EXTRA)


def config_from_args(args):
    return to_config(args, stage1_defaults())


def run(args) -> int:
    from .loop import train

    train(config_from_args(args))
    return 0
