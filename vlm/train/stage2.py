"""Stage 2: visual instruction tuning. LoRA (default), QLoRA (``--qlora``) or full LLM (``--full``)."""
from __future__ import annotations

from .args import add_common, to_config
from .config import stage2_defaults

HELP = "stage 2: instruction-tune the LLM (LoRA by default) and the projector"


def add_arguments(parser) -> None:
    defaults = stage2_defaults()
    add_common(parser, defaults)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--qlora", action="store_true", help="LLM in 4-bit NF4 (bitsandbytes) with LoRA on top")
    mode.add_argument("--full", action="store_true", help="train the whole LLM instead of LoRA")
    parser.add_argument("--projector-lr", type=float, default=defaults.projector_lr)
    parser.add_argument("--lora-r", type=int, default=defaults.lora.r)
    parser.add_argument("--lora-alpha", type=int, default=defaults.lora.alpha)
    parser.add_argument("--lora-dropout", type=float, default=defaults.lora.dropout)


def config_from_args(args):
    cfg = to_config(args, stage2_defaults())
    cfg.recipe = "qlora" if args.qlora else "full" if args.full else "lora"
    cfg.projector_lr = args.projector_lr
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = args.lora_r, args.lora_alpha, args.lora_dropout
    return cfg


def run(args) -> int:
    from .loop import train

    train(config_from_args(args))
    return 0
