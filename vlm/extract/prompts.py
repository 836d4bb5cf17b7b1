"""Prompt library for document extraction, and the compact OCR text format the model reads.

OCR text format (``format_ocr``): one text row per line, in reading order. OCR lines that sit on the same
visual row are joined by a TAB (so a receipt's ``TOTAL<TAB>9.00`` stays together); each new row starts a
new line; pages are separated by a blank line. No boxes or scores: a 135M model with ~8k context reads it,
so it is kept token-cheap. The image goes into the prompt as well (the ``<image>`` placeholder before it).

The same functions build the SROIE training records (``vlm.data``), so training and inference see
identical prompts: ``fields_prompt`` is the user text after ``"<image>\\n"`` and ``fields_answer`` the
assistant text.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ..ocr import OcrLine, same_row
from . import receipt_rules
from .layout import LineChoice
from .patterns import AMOUNT_PATTERN, DATE_PATTERN

CELL_SEP = "\t"


def format_ocr(lines: list[OcrLine]) -> str:
    """OCR lines (already in reading order) as compact text: rows on lines, same-row cells TAB-joined."""
    out: list[str] = []
    prev: OcrLine | None = None
    for line in lines:
        text = " ".join(line.text.split())
        if not text:
            continue
        if prev is None:
            out.append(text)
        elif same_row(prev, line):
            out[-1] += CELL_SEP + text
        else:
            if line.page != prev.page:
                out.append("")
            out.append(text)
        prev = line
    return "\n".join(out)


def _field_list(fields: list[str], descriptions: dict[str, str] | None) -> str:
    if not descriptions or not any(descriptions.get(f) for f in fields):
        return ", ".join(fields) + "."
    return "\n" + "\n".join(f"- {f}: {descriptions[f]}" if descriptions.get(f) else f"- {f}" for f in fields)


def fields_prompt(fields: list[str], ocr_text: str, descriptions: dict[str, str] | None = None) -> str:
    """The user text (after ``"<image>\\n"``) asking for ``fields`` as a JSON object."""
    ocr_text = ocr_text.strip() or "(no text found)"
    return (
        f"OCR text:\n{ocr_text}\n\n"
        f"Extract these fields as JSON: {_field_list(fields, descriptions)}\n"
        "Copy each value as printed; use null if it is not in the document."
    )


def freeform_prompt(ocr_text: str) -> str:
    """Ask for every key-value pair of the document as one flat JSON object."""
    ocr_text = ocr_text.strip() or "(no text found)"
    return (
        f"OCR text:\n{ocr_text}\n\n"
        "Extract every key-value pair in this document as one flat JSON object.\n"
        "Copy each value as printed."
    )


def fields_answer(values: dict, fields: list[str] | None = None) -> str:
    """Canonical JSON answer: keys in field order (``fields`` or the dict's order), ensure_ascii=False."""
    order = list(fields) if fields is not None else list(values)
    return json.dumps({k: values.get(k) for k in order}, ensure_ascii=False)


@dataclass(frozen=True)
class Template:
    """A ready extraction prompt: a document kind with its fields (or free-form key-value pairs)."""

    name: str
    fields: tuple[str, ...] = ()
    descriptions: dict[str, str] = field(default_factory=dict)
    date_fields: tuple[str, ...] = ()  # returned as ISO dates (JSON Schema format: date)
    freeform: bool = False
    patterns: dict[str, str] = field(default_factory=dict)  # field -> value pattern (see ``patterns``)
    upper_fields: tuple[str, ...] = ()  # values returned upper-cased (the template's labelling convention)
    # field -> decoded as a choice among whole OCR rows / runs of consecutive rows (see ``layout``)
    lines: dict[str, LineChoice] = field(default_factory=dict)
    # A rule-based reader of the page (OCR lines -> {field: value or None}, e.g. ``receipt_rules.extract_fields``)
    # as evidence: a field in ``reader_fields`` is decoded as the reader's value when the reader has one (the
    # model writes it, so the fields after it are decoded given it); any field the model leaves null takes
    # the reader's value. Only with grounding (the reader's values come from the OCR text).
    reader: Callable[[list[OcrLine]], dict] | None = None
    reader_fields: tuple[str, ...] = ()

    def prompt(self, ocr_text: str) -> str:
        if self.freeform:
            return freeform_prompt(ocr_text)
        return fields_prompt(list(self.fields), ocr_text, self.descriptions)


TEMPLATES: dict[str, Template] = {
    # The SROIE key fields, with no descriptions: identical to fields_prompt(["company", ...]) as trained;
    # date and total are chosen among the OCR's date- and amount-shaped strings. Company and address come
    # back upper-cased, as SROIE labels them (and the model is trained to write them); grounding ignores
    # case, so a value copied from mixed-case OCR ("Plaza") would otherwise keep a mixed case.
    # Company and address are whole OCR rows / runs of rows from the top of the receipt (``layout``): the model
    # picks a line instead of copying part of one. The receipt rules (``receipt_rules.evidence``) are the
    # reader: where they have a value the model writes it, the model decides where they have none (no date
    # found, no company row, an address without a postcode). Chosen on SROIE train receipts (docs/extraction.md).
    "receipt": Template("receipt", ("company", "date", "address", "total"),
                        patterns={"date": DATE_PATTERN, "total": AMOUNT_PATTERN},
                        upper_fields=("company", "address"),
                        lines={"company": LineChoice(top=8, max_rows=2, strip_ids=True),
                               "address": LineChoice(top=8, max_rows=4)},
                        reader=receipt_rules.evidence, reader_fields=("company", "date", "address", "total")),
    "invoice": Template(
        "invoice",
        ("invoice_number", "invoice_date", "due_date", "seller", "buyer", "subtotal", "tax", "total", "currency"),
        {
            "invoice_number": "the invoice number or ID",
            "invoice_date": "date the invoice was issued",
            "due_date": "payment due date",
            "seller": "company issuing the invoice",
            "buyer": "customer billed",
            "subtotal": "amount before tax",
            "tax": "tax amount",
            "total": "total amount due",
            "currency": "currency code or symbol",
        },
        date_fields=("invoice_date", "due_date"),
        patterns={"invoice_date": DATE_PATTERN, "due_date": DATE_PATTERN, "subtotal": AMOUNT_PATTERN,
                  "tax": AMOUNT_PATTERN, "total": AMOUNT_PATTERN},
    ),
    "form": Template(
        "form",
        ("name", "date", "address", "phone", "email", "id_number", "signature_date"),
        {
            "name": "full name of the person filling in the form",
            "date": "date on the form",
            "address": "postal address",
            "phone": "phone number",
            "email": "email address",
            "id_number": "ID, account or reference number",
            "signature_date": "date next to the signature",
        },
        patterns={"date": DATE_PATTERN, "signature_date": DATE_PATTERN},
    ),
    "kv": Template("kv", freeform=True),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}") from None
