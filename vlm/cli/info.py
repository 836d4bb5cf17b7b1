"""``vlm info``: what a model is made of."""
from __future__ import annotations

import json

from .common import add_model_arguments, load_model

HELP = "show a model's parts: towers, sizes, image tokens, dtype"


def add_arguments(parser) -> None:
    add_model_arguments(parser)


def run(args) -> int:
    print(json.dumps(load_model(args).info(), indent=2))
    return 0
