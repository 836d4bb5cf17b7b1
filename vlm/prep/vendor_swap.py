"""Vendor-swap augmentation for receipt extraction records.

A model trained on a few hundred receipts learns vendors by heart: it recalls a known chain's name and
address instead of reading them (on a vendor-disjoint slice, vlm-tiny v1 scored company F1 0.68 on
seen vendors and 0.34 on new ones). A swapped record takes a receipt's OCR text and replaces the rows
holding its company and address with those of another vendor's receipt (that receipt's own OCR rows, OCR
errors and case included), and asks for the donor's values. The same layout then carries many names, so
the only way to the answer is to read it where it is printed. Every printed copy of a value is replaced
(a footer's "thank you for shopping at ..." included).

A field is swapped only where its annotated value is found in both OCR texts (ignoring case and
whitespace, so a value printed over several rows is found); the date and total stay as they are.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

SWAP_FIELDS = ("company", "address")


def find_spans(text: str, value: str) -> list[tuple[int, int]]:
    """Every place ``value`` is printed in ``text``: case-insensitive, any whitespace (row breaks, TABs)
    between its words."""
    words = value.split()
    if not words:
        return []
    pattern = r"\s+".join(re.escape(w) for w in words)
    return [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def find_span(text: str, value: str) -> tuple[int, int] | None:
    """The first place ``value`` is printed in ``text`` (see :func:`find_spans`), or ``None``."""
    spans = find_spans(text, value)
    return spans[0] if spans else None


def swap_fields(text: str, entities: dict, donor_text: str, donor_entities: dict,
                fields: Sequence[str] = SWAP_FIELDS) -> tuple[str, dict] | None:
    """``text`` with the printed spans of ``fields`` replaced by the donor's printed spans, and the entities
    that go with it; ``None`` when no field could be swapped."""
    edits = []  # (start, end, replacement, field)
    for f in fields:
        value, donor_value = entities.get(f), donor_entities.get(f)
        if not value or not donor_value or value == donor_value:
            continue
        spans, donor_span = find_spans(text, value), find_span(donor_text, donor_value)
        if not spans or donor_span is None:
            continue
        edits += [(start, end, donor_text[donor_span[0]:donor_span[1]], f) for start, end in spans]
    edits.sort()
    if any(a[1] > b[0] for a, b in zip(edits, edits[1:])):  # overlapping spans: ambiguous, skip the record
        return None
    if not edits:
        return None
    out, pos = [], 0
    new_entities = dict(entities)
    for start, end, replacement, f in edits:
        out += [text[pos:start], replacement]
        pos = end
        new_entities[f] = donor_entities[f]
    out.append(text[pos:])
    return "".join(out), new_entities


def swap_pairs(vendors: Sequence[str], per_item: int, seed: int) -> list[tuple[int, int]]:
    """``(item, donor)`` index pairs: ``per_item`` donors for each item, each from another vendor."""
    rng = random.Random(seed)
    pairs = []
    for i, vendor in enumerate(vendors):
        others = [j for j, v in enumerate(vendors) if v != vendor]
        for j in rng.sample(others, min(per_item, len(others))):
            pairs.append((i, j))
    return pairs
