"""The layout of a page's text lines: visual rows rebuilt from OCR boxes, and fields decoded as a choice among
whole rows or runs of consecutive rows (``LineChoice``).

Rows (:func:`ocr_rows`): OCR lines whose boxes overlap vertically by more than half (and not horizontally)
are one row, read left to right, rows top to bottom; the cells of a row are joined by one space. Lines
without boxes (plain strings) are taken as rows in the given order. The SROIE rules baseline
(``vlm.eval.baselines.rules``) reads the same rows.

Line choices: a field with a :class:`LineChoice` (a template's ``lines``, e.g. the receipt's company and
address) is not free text copied from anywhere in the OCR text, but one of the candidates
:func:`line_candidates` lists: a run of 1 to ``max_rows`` consecutive rows, starting within the first
``top`` rows of the page, joined by spaces, in reading order. With ``strip_ids`` a candidate's trailing
registration number (``"MR D.I.Y. (M) SDN BHD (CO.REG : 860671-D)"`` -> ``"MR D.I.Y. (M) SDN BHD"``) is cut
off, as company names are labelled without it; the uncut run stays a candidate too. The model still decides
which run is the value, but it can no longer stop half-way through a row or begin in the middle of one.
Candidates are as printed and upper-cased (as the pattern candidates are); longer than the field's
``max_length`` are dropped.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _ws(text: str | None) -> str:
    return " ".join(str(text).split()) if text else ""


# --- rows ---------------------------------------------------------------------------------------
def _bounds(box: Any) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of a 4-point polygon, a flat 8-number list or an (x0, y0, x1, y1) box."""
    if box is None:
        return None
    try:
        flat = [float(v) for v in (box.flatten().tolist() if hasattr(box, "flatten") else _flatten(box))]
    except (TypeError, ValueError):
        return None
    if len(flat) == 4:
        x0, y0, x1, y1 = flat
    elif len(flat) >= 6 and len(flat) % 2 == 0:
        xs, ys = flat[0::2], flat[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    else:
        return None
    return x0, y0, x1, y1


def _flatten(box) -> list:
    out = []
    for v in box:
        if isinstance(v, (list, tuple)):
            out.extend(v)
        else:
            out.append(v)
    return out


def ocr_rows(lines: Sequence[Any]) -> list[str]:
    """Visual rows of text from OCR lines (objects with ``.text``/``.box``, dicts, or plain strings)."""
    items = []
    for i, line in enumerate(lines):
        if isinstance(line, str):
            text, box = line, None
        elif isinstance(line, dict):
            text, box = line.get("text", ""), line.get("box")
        else:
            text, box = getattr(line, "text", ""), getattr(line, "box", None)
        text = _ws(text)
        if text:
            items.append((i, text, _bounds(box)))
    if not items or any(b is None for _, _, b in items):
        return [t for _, t, _ in items]  # no geometry: the given order is the reading order
    rows: list[list[tuple[int, str, tuple]]] = []
    for item in sorted(items, key=lambda it: ((it[2][1] + it[2][3]) / 2, it[2][0])):
        _, _, (x0, y0, x1, y1) = item
        h = max(y1 - y0, 1.0)
        placed = False
        for row in rows[-3:]:  # only recent rows can overlap in y
            ry0 = sum(b[1] for _, _, b in row) / len(row)
            ry1 = sum(b[3] for _, _, b in row) / len(row)
            overlap = min(y1, ry1) - max(y0, ry0)
            if overlap > 0.5 * min(h, max(ry1 - ry0, 1.0)) and not any(
                min(x1, b[2]) - max(x0, b[0]) > 0.3 * min(x1 - x0, b[2] - b[0]) for _, _, b in row
            ):
                row.append(item)
                placed = True
                break
        if not placed:
            rows.append([item])
    return [" ".join(t for _, t, _ in sorted(row, key=lambda it: it[2][0])) for row in rows]


# --- registration numbers ---------------------------------------------------------------------------
_REG_INNER = re.compile(r"\s*[\(\[][^\)\]]*\d{3,}[^\)\]]*([\)\]].*)?$")  # "(1211036-W)", "(CO.NO. 12...)"
_REG_TAIL = re.compile(r"\s*[\(\[]?\s*(CO\.?\s*)?(REG\.?\s*(NO\.?)?|ROC|NO\.?)?\s*:?\s*[A-Z]{0,3}\d{4,}[\-\s]?[A-Z]?\s*[\)\]]?\s*$", re.I)


def strip_registration(text: str) -> str:
    """``text`` without a trailing registration number: a bracketed group holding 3+ digits (and what follows
    it), or a final ``CO. REG NO: 123456-X``-like token."""
    text = _REG_INNER.sub("", text)
    text = _REG_TAIL.sub("", text).rstrip(" ,;:")
    return _ws(text)


# --- line choices -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineChoice:
    """A field decoded as one run of 1..``max_rows`` consecutive rows starting in the first ``top`` rows."""

    top: int = 10
    max_rows: int = 1
    strip_ids: bool = False  # also offer each run without its trailing registration number

    def __post_init__(self) -> None:
        if self.top < 1 or self.max_rows < 1:
            raise ValueError(f"LineChoice needs top >= 1 and max_rows >= 1, got {self.top}, {self.max_rows}")


def line_candidates(rows: Sequence[str], rule: LineChoice, max_length: int | None = None) -> tuple[str, ...]:
    """Distinct candidate values of a :class:`LineChoice` field (see the module docstring), in reading order."""
    rows = [_ws(r) for r in rows]
    found: list[str] = []
    for i in range(min(rule.top, len(rows))):
        for j in range(i + 1, min(i + rule.max_rows, len(rows)) + 1):
            run = " ".join(r for r in rows[i:j] if r)
            forms = [run, strip_registration(run)] if rule.strip_ids else [run]
            for form in forms:
                for value in (form, form.upper()):
                    if value and value not in found and (max_length is None or len(value) <= max_length):
                        found.append(value)
    return tuple(found)
