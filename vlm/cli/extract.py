"""``vlm extract FILE [--fields a,b,c | --schema schema.json | --template receipt]``: fields as JSON on stdout."""
from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_arguments, add_ocr_engine_argument, load_model

HELP = "extract fields from a receipt/invoice/form image or PDF as JSON grounded in OCR"


def add_arguments(parser) -> None:
    parser.add_argument("file", help="image (jpg/png/webp/tiff...) or PDF")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--fields", help="comma-separated field names, e.g. company,date,address,total")
    what.add_argument("--schema", help="JSON Schema file of a flat object (string/number/integer/boolean fields)")
    what.add_argument("--template", help="ready prompt: receipt, invoice, form or kv (every key-value pair)")
    parser.add_argument("--pages", help="1-based pages of a PDF, e.g. 1-3,5 (default: all)")
    parser.add_argument("--per-page", action="store_true",
                        help="one result per page instead of merging (first non-null value per field)")
    parser.add_argument("--no-ground", action="store_true",
                        help="allow values that are not in the OCR text (default: they must be)")
    parser.add_argument("--dpi", type=float, default=None, help="PDF render resolution (default 200)")
    parser.add_argument("--sources", action="store_true",
                        help='also print where each value came from: {"fields": ..., "sources": {field: [{page, box '
                             '[x0, y0, x1, y1] in page pixels, text of the OCR line}]}}')
    add_ocr_engine_argument(parser)
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer budget (default: by field count)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=None)


def run(args) -> int:
    from vlm.extract.schema import SchemaError, load_schema_file, resolve_schema

    if args.fields is None and args.schema is None and args.template is None:
        raise SchemaError("say what to extract: --fields a,b,c, --schema schema.json or --template NAME")
    fields = None
    if args.fields is not None:
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        if not fields:
            raise SchemaError("the field list is empty: name at least one field, e.g. --fields company,total")
    schema = load_schema_file(args.schema) if args.schema is not None else None
    resolve_schema(fields, schema, args.template)  # a bad schema fails before the model loads
    if not args.file.startswith("data:") and not Path(args.file).is_file():
        raise FileNotFoundError(f"file not found: {args.file}")
    model = load_model(args)
    result = model.extract(
        args.file, fields=fields, schema=schema, pages=args.pages, template=args.template,
        per_page=args.per_page, ground=not args.no_ground, dpi=args.dpi, ocr_engine=args.ocr_engine,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, sources=args.sources,
    )
    if args.sources:
        result, boxes = result
        result = {"fields": result, "sources": _sources_json(boxes)}
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _sources_json(boxes):
    """``extract(..., sources=True)``'s boxes as JSON (a dict per field, or a list of them with --per-page)."""
    if isinstance(boxes, list):
        return [_sources_json(page) for page in boxes]
    return {field: [b.to_dict() for b in found] for field, found in boxes.items()}
