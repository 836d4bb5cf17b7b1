"""Value patterns: a field whose values have a known shape (a date, an amount) is decoded as a choice among
the OCR substrings of that shape, instead of free text.

A field gets a pattern from a template (``receipt``: date and total) or from the JSON Schema ``pattern``
keyword. Before decoding, :func:`candidates` collects every substring of the page's OCR text that the
pattern matches (searched from every start position, so overlapping readings are kept), within one OCR
cell (TAB-separated) or row at a time, plus the upper-cased form of each (grounding ignores case, and
receipts print keys in upper case). The decoder may then emit only one of those strings or ``null``: the
model still decides which date or which amount is the answer, but it can no longer emit a half-copied
number. No candidate on the page means the value is ``null``.

Patterns are regular expressions in the syntax of the ``regex`` module (a superset of Python's ``re``;
JSON Schema patterns in everyday use are accepted unchanged).
"""
from __future__ import annotations

import regex

_MONTH = r"(?:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|SEPT|OCT|NOV|DEC)[A-Z]*"
#: Dates as printed on receipts and invoices: 25/12/2018, 25-12-18, 2018-12-25, 25 DEC 2018, 25-DEC-2018,
#: DEC 25, 2018. A four-digit year may run straight into the time (``25/01/20181:22PM`` on a bad scan).
DATE_PATTERN = (
    rf"(?<![A-Z0-9])(?:"
    rf"(?:0?[1-9]|[12]\d|3[01])([/.-])(?:0?[1-9]|1[0-2])\1(?:(?:19|20)\d\d|\d\d(?!\d))"
    rf"|(?:19|20)\d\d([/.-])(?:0?[1-9]|1[0-2])\2(?:0?[1-9]|[12]\d|3[01])(?!\d)"
    rf"|(?:0?[1-9]|[12]\d|3[01])([ -]?){_MONTH}\3,? ?(?:(?:19|20)\d\d|\d\d(?!\d))"
    rf"|{_MONTH} (?:0?[1-9]|[12]\d|3[01]), ?(?:19|20)\d\d"
    rf")"
)
#: Money amounts with two decimals, optionally with a currency printed against or beside them:
#: 9.00, 1,234.50, -0.01, RM9.00, RM 9.00, $9.00 (with a currency, the bare amount is a candidate too).
AMOUNT_PATTERN = r"(?:(?<=RM ?|\$ ?)|(?<![A-Z0-9.,$]))(?:RM ?|\$ ?)?-?(?:\d{1,3}(?:,\d{3})+|\d+)\.\d\d(?![0-9])"

MAX_CANDIDATES = 64


def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile case-insensitively; a bad pattern raises ``ValueError`` naming it."""
    try:
        return regex.compile(pattern, regex.IGNORECASE)
    except regex.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None


def candidates(pattern: str, ocr_text: str, limit: int = MAX_CANDIDATES) -> tuple[str, ...]:
    """Distinct OCR substrings matching ``pattern`` (and their upper-case forms), in reading order."""
    compiled = compile_pattern(pattern)
    found: list[str] = []
    for row in ocr_text.split("\n"):
        for cell in row.split("\t"):
            cell = " ".join(cell.split())
            for m in compiled.finditer(cell, overlapped=True):
                for value in (m.group().strip(), m.group().strip().upper()):
                    if value and value not in found:
                        found.append(value)
            if len(found) >= limit:
                return tuple(found[:limit])
    return tuple(found)
