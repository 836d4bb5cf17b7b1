"""``vlm classify IMAGE --labels a,b,c``: zero-shot labels of an image from a CLIP, best first."""
from __future__ import annotations

import json

HELP = "zero-shot classify an image with a CLIP (labels with probabilities)"


def add_clip_arguments(parser) -> None:
    parser.add_argument("--clip", default=None,
                        help="CLIP folder (`vlm train clip` output, a CLIPModel folder, ...); default: the CLIP "
                        "that --model carries in its clip/ folder")
    parser.add_argument("--model", default="vlm-tiny", help="model whose CLIP to use (default: vlm-tiny)")


def load_clip(args):
    from vlm.clip import Clip

    return Clip.load(args.clip or args.model)


def add_arguments(parser) -> None:
    parser.add_argument("image", help="image file")
    parser.add_argument("--labels", required=True, help="comma-separated labels, e.g. dog,cat,bike")
    parser.add_argument("--template", action="append", default=None,
                        help="prompt with {} for the label (default: 'a photo of {}.'); repeat to average several")
    add_clip_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print [[label, probability], ...] as JSON")


def run(args) -> int:
    from vlm.clip import DEFAULT_TEMPLATE

    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    result = load_clip(args).classify(args.image, labels, templates=args.template or [DEFAULT_TEMPLATE])
    if args.json:
        print(json.dumps([[label, round(p, 6)] for label, p in result]))
    else:
        width = max(len(label) for label, _ in result)
        for label, p in result:
            print(f"{label:<{width}}  {p:.4f}")
    return 0
