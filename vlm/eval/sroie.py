"""SROIE task 3 (key information extraction from receipts): metric and the model as a system.

Metric, per field and overall (micro-averaged over the four fields):

- a prediction and a key are compared after :func:`~vlm.eval.text_norm.normalise_whitespace`
  (whitespace runs -> one space, ends stripped; case and punctuation count);
- a null or empty prediction is *no prediction*: it lowers recall, never precision;
- precision = correct / non-empty predictions, recall = correct / non-empty keys, F1 their harmonic mean.

Systems see the image only. Their OCR is part of the system; the dataset's OCR files and keys are
never read for predictions.
"""
from __future__ import annotations

from collections.abc import Sequence

from .records import Record
from .text_norm import normalise_whitespace

FIELDS = ("company", "date", "address", "total")


def _prf(tp: int, n_pred: int, n_gold: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "correct": tp, "predicted": n_pred, "gold": n_gold}


def clean_prediction(pred, fields: Sequence[str] = FIELDS) -> dict:
    """``{field: str | None}`` for exactly ``fields``; missing or non-dict predictions become nulls."""
    pred = pred if isinstance(pred, dict) else {}
    out = {}
    for f in fields:
        value = pred.get(f)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        value = normalise_whitespace(value) if isinstance(value, str) else ""
        out[f] = value or None
    return out


def score(predictions: Sequence[dict | None], keys: Sequence[dict], fields: Sequence[str] = FIELDS) -> dict:
    """P/R/F1 per field and overall for parallel lists of predictions and gold ``entities``."""
    if len(predictions) != len(keys):
        raise ValueError(f"{len(predictions)} predictions for {len(keys)} keys")
    per_field = {}
    totals = [0, 0, 0]
    for f in fields:
        tp = n_pred = n_gold = 0
        for pred, key in zip(predictions, keys):
            p = normalise_whitespace((pred or {}).get(f))
            g = normalise_whitespace(key.get(f))
            n_pred += bool(p)
            n_gold += bool(g)
            tp += bool(p) and p == g
        per_field[f] = _prf(tp, n_pred, n_gold)
        totals = [totals[0] + tp, totals[1] + n_pred, totals[2] + n_gold]
    return {"fields": per_field, "overall": _prf(*totals)}


def reference(record: Record) -> dict:
    return record.data["entities"]


def model_predictor(vlm, template: str = "receipt", ocr_engine: str | None = None, **gen):
    """The model as a system: ``VLM.extract(image, template="receipt")`` per receipt (the four SROIE fields;
    date and total chosen among the OCR's date- and amount-shaped strings), OCR by ``ocr_engine``."""
    kw = {} if ocr_engine is None else {"ocr_engine": ocr_engine}

    def predict(batch: Sequence[Record]) -> list[dict]:
        return [clean_prediction(vlm.extract(rec.image, template=template, **kw, **gen)) for rec in batch]

    return predict
