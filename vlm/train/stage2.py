"""Stage 2: visual instruction tuning. LoRA (default), QLoRA (``--qlora``) or full LLM (``--full``)."""
from __future__ import annotations

from vlm import flags

from .args import add_common, to_config
from .config import stage2_defaults

HELP = "stage 2: instruction-tune the LLM (LoRA by default) and the projector"


def add_arguments(parser) -> None:
    defaults = stage2_defaults()
    add_common(parser, defaults, ("projector_lr",))
    mode = parser.add_mutually_exclusive_group()  # both set the config's `recipe` (default: lora)
    mode.add_argument("--qlora", dest="recipe", action="store_const", const="qlora", default=defaults.recipe,
                      help="LLM in 4-bit NF4 (bitsandbytes) with LoRA on top")
    mode.add_argument("--full", dest="recipe", action="store_const", const="full", default=defaults.recipe,
                      help="train the whole LLM instead of LoRA")
    flags.add_flags(parser, defaults.lora, prefix="lora_", skip=("target_modules",))


def config_from_args(args):
    cfg = stage2_defaults()
    flags.apply(args, cfg.lora, prefix="lora_")
    return to_config(args, cfg)


def run(args) -> int:
    from .loop import train

    train(config_from_args(args))
    return 0
