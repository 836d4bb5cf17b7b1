"""The OCR line type every engine returns (:mod:`vlm.ocr`, :mod:`vlm.ocr_tesseract`, :mod:`vlm.ocr_merge`).

A leaf module: it imports nothing from vlm, so the engines and the merge can share the type without import
cycles. ``vlm.ocr.OcrLine`` is the same class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class OcrLine:
    text: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    page: int = 1  # 1-based page number; set by vlm.documents for multi-page sources

    def to_dict(self) -> dict:
        out = asdict(self)
        out["box"] = [round(v, 1) for v in self.box]
        out["score"] = round(self.score, 4)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "OcrLine":
        return cls(text=d["text"], box=tuple(float(v) for v in d["box"]), score=float(d["score"]),
                   page=int(d.get("page", 1)))
