"""``vlm ocr FILE``: the OCR lines with boxes, in reading order, as JSON (no model needed)."""
from __future__ import annotations

import json

HELP = "OCR an image or PDF: text lines with boxes in reading order, as JSON"


def add_arguments(parser) -> None:
    parser.add_argument("file", help="image (jpg/png/webp/tiff...) or PDF")
    parser.add_argument("--pages", help="1-based pages of a PDF, e.g. 1-3,5 (default: all)")
    parser.add_argument("--dpi", type=float, default=None, help="PDF render resolution (default 200)")
    parser.add_argument("--text", action="store_true",
                        help="print the compact text the extraction prompt uses instead of JSON")
    from .common import add_ocr_engine_argument

    add_ocr_engine_argument(parser)


def run(args) -> int:
    from vlm.documents import ocr_document
    from vlm.extract.prompts import format_ocr

    lines = ocr_document(args.file, args.pages, dpi=args.dpi, engine=args.ocr_engine)
    if args.text:
        print(format_ocr(lines))
    else:
        rows = [json.dumps(line.to_dict(), ensure_ascii=False) for line in lines]
        print("[\n  " + ",\n  ".join(rows) + "\n]" if rows else "[]")
    return 0
