"""Stage 1: feature alignment. Only the projector trains (LLaVA-1.5: lr 1e-3, cosine, 3% warmup, 1 epoch)."""
from __future__ import annotations

from .args import add_common, to_config
from .config import stage1_defaults

HELP = "stage 1: train the projector on image-caption data (tower and LLM frozen)"


def add_arguments(parser) -> None:
    add_common(parser, stage1_defaults())
    parser.add_argument("--vision", default=None,
                        help="vision tower folder, or 'preset' for a fresh TowerPreset tower; with it, --model "
                             "is the LLM (registered name or folder) and a new llava model is composed. "
                             "Without it, --model is a llava folder or shipped name")


def config_from_args(args):
    cfg = to_config(args, stage1_defaults())
    cfg.vision = args.vision
    return cfg


def run(args) -> int:
    from .loop import train

    train(config_from_args(args))
    return 0
