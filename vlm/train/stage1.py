"""Stage 1: feature alignment. Only the projector trains (LLaVA-1.5: lr 1e-3, cosine, 3% warmup, 1 epoch)."""
from __future__ import annotations

from .args import add_common, to_config
from .config import stage1_defaults

HELP = "stage 1: train the projector on image-caption data (tower and LLM frozen)"


def add_arguments(parser) -> None:
    add_common(parser, stage1_defaults())
    parser.add_argument("--vision", default=None,
                        help="vision tower: a registered name (dinov2-vits14), a folder, or 'preset' for a fresh "
                             "TowerPreset tower; with it, --model is the LLM (registered name or folder) and a new "
                             "llava model is composed. Without it, --model is a llava folder or shipped name")
    parser.add_argument("--image-size", type=int, default=None,
                        help="with --vision: the tower's input size in pixels, a multiple of its patch size "
                             "(default: the tower's own)")
    parser.add_argument("--vision-feature-layer", type=int, nargs="+", default=None,
                        help="with --vision: the tower hidden state fed to the projector (default -2; several "
                             "are concatenated)")


def config_from_args(args):
    cfg = stage1_defaults()
    cfg.vision = args.vision
    cfg.image_size = args.image_size
    layers = args.vision_feature_layer
    cfg.vision_feature_layer = layers[0] if layers and len(layers) == 1 else layers
    return to_config(args, cfg)


def run(args) -> int:
    from .loop import train

    train(config_from_args(args))
    return 0
