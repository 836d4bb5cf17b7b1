"""Document extraction: receipts, invoices, forms -> validated JSON grounded in OCR text.

- ``prompts``: the prompt library (templates) and the compact OCR text format;
- ``schema``: fields list / JSON Schema / pydantic model -> internal schema, typing rules, validation;
- ``constrained``: JSON-constrained decoding (state machine + logits processor);
- ``extract``: the pipeline, ``extract(vlm, source, fields=... | schema=... | template=...)``.
"""
from .extract import extract, ocr_document
from .prompts import TEMPLATES, fields_answer, fields_prompt, format_ocr

__all__ = ["TEMPLATES", "extract", "fields_answer", "fields_prompt", "format_ocr", "ocr_document"]
