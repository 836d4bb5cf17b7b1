"""OCR engines on SROIE: how often each gold field value occurs in the OCR text, and how fast the engine is.

The *ceiling* of a field is the fraction of receipts with a non-empty gold value whose value, after
:func:`~vlm.eval.text_norm.normalise_whitespace` (the SROIE metric's rule), is a substring of the OCR text
in the extraction prompt's format (:func:`vlm.extract.prompts.format_ocr`) after the same normalisation.
Grounded extraction copies values from that text, so the ceiling bounds its exact-match recall. The
overall ceiling is micro-averaged over the four fields; ``overall_casefold`` ignores case as well.

Speed: the first ``timed`` receipts are OCR'd without the cache, after one warm-up call on a small blank
image (model loading is not counted); the report gives the median seconds per receipt over those and
characters per second (their OCR text characters / their total seconds). The other receipts use the cache.
``"both"`` runs both engines, so its time is the sum.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .records import Record
from .sroie import FIELDS
from .text_norm import normalise_whitespace


@dataclass(frozen=True)
class OcrEvalConfig:
    engine: str  # an vlm.ocr.OcrEngine
    timed: int = 10  # the first N receipts are OCR'd uncached and timed
    tesseract: object | None = None  # vlm.ocr_tesseract.TesseractConfig (None: the default)
    merge: object | None = None  # vlm.ocr_merge.MergeConfig (None: the default)
    fields: tuple[str, ...] = FIELDS

    def __post_init__(self) -> None:
        from vlm.ocr import check_engine

        check_engine(self.engine)
        if self.timed < 0:
            raise ValueError(f"timed must be >= 0, got {self.timed}")


def field_hits(text: str, entities: dict, fields: Sequence[str] = FIELDS) -> dict[str, tuple[bool, bool] | None]:
    """Per field: ``(exact, casefold)`` occurrence of the normalised gold value in ``text``; None: no gold."""
    text = normalise_whitespace(text)
    folded = text.casefold()
    out = {}
    for f in fields:
        gold = normalise_whitespace(entities.get(f))
        out[f] = (gold in text, gold.casefold() in folded) if gold else None
    return out


def summarise(hits: Sequence[dict], seconds: Sequence[float], chars: Sequence[int],
              fields: Sequence[str] = FIELDS) -> dict:
    """The report of one engine from per-receipt hits and the timed receipts' seconds and text lengths."""
    per_field, n_hit, n_fold, n_gold = {}, 0, 0, 0
    for f in fields:
        got = [h[f] for h in hits if h[f] is not None]
        exact, folded = sum(g[0] for g in got), sum(g[1] for g in got)
        per_field[f] = {"ceiling": exact / len(got) if got else 0.0, "hits": exact, "gold": len(got),
                        "ceiling_casefold": folded / len(got) if got else 0.0}
        n_hit, n_fold, n_gold = n_hit + exact, n_fold + folded, n_gold + len(got)
    total_s = sum(seconds)
    return {
        "receipts": len(hits),
        "fields": per_field,
        "overall": n_hit / n_gold if n_gold else 0.0,
        "overall_casefold": n_fold / n_gold if n_gold else 0.0,
        "timed_receipts": len(seconds),
        "median_s_per_receipt": statistics.median(seconds) if seconds else None,
        "mean_s_per_receipt": total_s / len(seconds) if seconds else None,
        "chars_per_s": sum(chars) / total_s if total_s > 0 else None,
    }


def evaluate_engine(records: Sequence[Record], config: OcrEvalConfig, progress: bool = False) -> dict:
    """Ceilings and speed of one engine on SROIE records (``image`` and ``entities``)."""
    from PIL import Image

    from vlm.extract.prompts import format_ocr
    from vlm.ocr import run_ocr

    kw = {"engine": config.engine, "tesseract": config.tesseract, "merge": config.merge}
    run_ocr(Image.new("RGB", (64, 64), "white"), cache=False, **kw)  # load the engine(s) first
    hits, seconds, chars = [], [], []
    for i, rec in enumerate(records):
        timed = i < config.timed
        start = time.perf_counter()
        lines = run_ocr(rec.image, cache=not timed, **kw)
        elapsed = time.perf_counter() - start
        text = format_ocr(lines)
        if timed:
            seconds.append(elapsed)
            chars.append(len(text))
        hits.append(field_hits(text, rec.data["entities"], config.fields))
        if progress:
            print(f"  {config.engine} {i + 1}/{len(records)} {rec.id} {elapsed:.2f}s", flush=True)
    return summarise(hits, seconds, chars, config.fields)


@dataclass
class OcrReport:
    data: str
    engines: dict[str, dict] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def table(self) -> str:
        """A Markdown table: engine, per-field ceilings, overall (exact and case-folded), median s/receipt, chars/s."""
        head = "| engine | " + " | ".join(FIELDS) + " | overall | overall, any case | median s/receipt | chars/s |"
        rows = [head, "|" + " --- |" * (len(FIELDS) + 5)]
        for name, m in self.engines.items():
            cells = [f"{m['fields'][f]['ceiling']:.3f}" for f in FIELDS] + [f"{m['overall']:.3f}", f"{m['overall_casefold']:.3f}"]
            s, c = m["median_s_per_receipt"], m["chars_per_s"]
            cells += [f"{s:.2f}" if s is not None else "-", f"{c:.0f}" if c is not None else "-"]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(rows)
