"""``vlm ask IMAGE QUESTION``: answer one question about one image, streaming to stdout."""
from __future__ import annotations

import sys

from .common import add_generation_arguments, add_model_arguments, generation_kwargs, load_model

HELP = "ask a question about an image"


def add_arguments(parser) -> None:
    parser.add_argument("image", help="image path (or '-' for none)")
    parser.add_argument("question")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    parser.add_argument("--no-stream", action="store_true", help="print the answer only when complete")


def run(args) -> int:
    model = load_model(args)
    image = None if args.image == "-" else args.image
    if args.no_stream:
        print(model.ask(image, args.question, **generation_kwargs(args)))
        return 0
    for piece in model.stream(image, args.question, **generation_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
