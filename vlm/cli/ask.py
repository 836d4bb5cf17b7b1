"""``vlm ask IMAGE_OR_VIDEO QUESTION`` and ``vlm ask --db INDEX QUESTION``, streaming the answer to stdout.

* An image: one question about it.
* A video (a file with a video extension, :data:`vlm.video.VIDEO_EXTENSIONS`): ``--frames`` frames sampled
  uniformly, given as images of one prompt with their times (:mod:`vlm.video`).
* ``--db INDEX``: retrieval: the ``-k`` images (or video frames) of the index most similar to the question
  are shown to the model (``VLM.ask_index``); the answer is printed, then the images it used.
"""
from __future__ import annotations

import sys

from .common import add_generation_arguments, add_model_arguments, generation_kwargs, load_model

HELP = "ask a question about an image, a video, or (--db) the best images of an index"


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE QUESTION",
                        help="an image or video path ('-' for none) and the question; with --db, the question only")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    parser.add_argument("--frames", type=int, default=None,
                        help="frames sampled uniformly from a video (default: 4, vlm.video.VideoOptions)")
    parser.add_argument("--db", default=None, help="answer from the images of this index (vlm index add)")
    parser.add_argument("-k", type=int, default=3, help="with --db: how many images to show the model (default 3)")
    parser.add_argument("--filter", default=None, help='with --db: Milvus expression, e.g. \'meta["album"] == "a"\'')
    parser.add_argument("--clip", default=None, help="with --db: the CLIP (default: the one the index was built with)")
    parser.add_argument("--no-stream", action="store_true", help="print the answer only when complete")


def _inputs(args) -> tuple[str | None, str]:
    if args.db:
        if len(args.inputs) != 1:
            raise ValueError(f"with --db give only the question (got {len(args.inputs)} arguments)")
        return None, args.inputs[0]
    if len(args.inputs) != 2:
        raise ValueError("give an image or video path ('-' for none) and a question, or --db INDEX and a question")
    image, question = args.inputs
    return (None if image == "-" else image), question


def run(args) -> int:
    from dataclasses import replace

    source, question = _inputs(args)
    model = load_model(args)
    if args.frames is not None:
        model.video = replace(model.video, frames=args.frames)
    if args.db:
        return _ask_index(model, question, args)
    if args.no_stream:
        print(model.ask(source, question, **generation_kwargs(args)))
        return 0
    for piece in model.stream(source, question, **generation_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _ask_index(model, question: str, args) -> int:
    from pathlib import Path

    from vlm.index import MANIFEST, ImageIndex

    from .index import _clip

    if not Path(args.db, MANIFEST).is_file():
        ImageIndex.open(args.db, None)  # raises the missing-index error before any CLIP is loaded
    with ImageIndex.open(args.db, _clip(args)) as index:
        answer = model.ask_index(index, question, k=args.k, filter=args.filter, **generation_kwargs(args))
    print(answer)
    return 0
