"""SROIE baseline (a): OCR + hand-written rules for company, date, address and total.

The rules live in :mod:`vlm.extract.receipt_rules` (the receipt template reads them as evidence too); see its
docstring for what they do. This module makes them a system of the SROIE evaluation.
"""
from __future__ import annotations

from ...extract.receipt_rules import *  # noqa: F401,F403
from ...extract.receipt_rules import extract_company_address, extract_date, extract_fields, extract_total, find_dates, ocr_rows  # noqa: F401


def predictor(ocr=None):
    """The rules system: image -> OCR (``vlm.ocr.run_ocr`` unless given) -> :func:`extract_fields`."""
    if ocr is None:
        from vlm.ocr import run_ocr as ocr

    def predict(batch) -> list[dict]:
        return [extract_fields(ocr(rec.image)) for rec in batch]

    return predict
