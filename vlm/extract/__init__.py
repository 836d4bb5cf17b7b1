"""Document extraction: receipts, invoices, forms -> validated JSON grounded in OCR text.

- ``prompts``: the prompt library (templates) and the compact OCR text format;
- ``schema``: fields list / JSON Schema / pydantic model -> internal schema, typing rules, validation;
- ``constrained``: JSON-constrained decoding (state machine + logits processor);
- ``extract``: the pipeline, ``extract(vlm, source, fields=... | schema=... | template=...)``;
- ``sources``: where each value came from (``locate``: OCR line boxes per field) and ``draw_sources``.

``extract`` is imported lazily so that ``prompts`` (used by data preparation) loads without torch.
"""
from ..documents import ocr_document
from .prompts import TEMPLATES, fields_answer, fields_prompt, format_ocr
from .sources import SourceBox, annotate_pages, draw_sources, locate

__all__ = ["TEMPLATES", "SourceBox", "annotate_pages", "draw_sources", "extract", "fields_answer", "fields_prompt",
           "format_ocr", "locate", "ocr_document"]


def __getattr__(name: str):
    if name == "extract":
        import importlib

        function = importlib.import_module(".extract", __name__).extract
        globals()["extract"] = function  # importing the submodule bound the module to this name: rebind it
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
