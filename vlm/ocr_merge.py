"""Combining two OCR engines' lines of one image (the ``"both"`` engine of :func:`vlm.ocr.run_ocr`).

Contract of :func:`merge_lines` (``primary``: the lines of ``MergeConfig.primary``'s engine; pure, deterministic,
order-free: callers apply reading order):

- every line of ``primary`` is kept as it is;
- a ``secondary`` line is a *duplicate* when its box overlaps primary lines (intersection / the smaller box's
  area >= ``overlap``) and its text is similar to theirs: difflib's ratio of case-folded, whitespace-free text
  >= ``similarity``, compared with the overlapping primary lines joined left to right (one engine may cut a
  row where the other does not). Duplicates are dropped;
- a secondary line that overlaps no primary line (text the primary engine missed) is kept;
- a secondary line that overlaps primary lines but reads differently (a *conflict*: the engines disagree)
  is kept only when ``keep_conflicts`` is true. Keeping conflicts raises the chance that the right reading is
  in the text at the cost of a longer, repetitive OCR text.
"""
from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

from .ocr_line import OcrLine


@dataclass(frozen=True)
class MergeConfig:
    primary: Literal["rapidocr", "tesseract"] = "rapidocr"  # whose lines are all kept (the other fills in)
    overlap: float = 0.5  # box overlap (intersection / smaller area) that makes two lines the same region
    similarity: float = 0.6  # text similarity (difflib ratio) above which overlapping lines are one reading
    keep_conflicts: bool = False  # keep secondary lines that overlap primary ones but read differently

    def __post_init__(self) -> None:
        if self.primary not in ("rapidocr", "tesseract"):
            raise ValueError(f"primary must be rapidocr or tesseract, got {self.primary!r}")
        for name in ("overlap", "similarity"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


def box_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection area / the smaller box's area (1.0 when one box lies inside the other)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller if smaller > 0 else 0.0


def _key(text: str) -> str:
    return "".join(text.split()).casefold()


def text_similarity(a: str, b: str) -> float:
    """difflib ratio of the two texts, case-folded and without whitespace (1.0 = same characters)."""
    a, b = _key(a), _key(b)
    if not a and not b:
        return 1.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def classify(line: OcrLine, primary: list[OcrLine], config: MergeConfig) -> str:
    """``"new"``, ``"duplicate"`` or ``"conflict"`` for one secondary line against the primary lines."""
    hits = [p for p in primary if p.page == line.page and box_overlap(p.box, line.box) >= config.overlap]
    if not hits:
        return "new"
    joined = " ".join(p.text for p in sorted(hits, key=lambda p: p.box[0]))
    if max(text_similarity(line.text, joined), max(text_similarity(line.text, p.text) for p in hits)) \
            >= config.similarity:
        return "duplicate"
    return "conflict"


def merge_lines(primary: list[OcrLine], secondary: list[OcrLine], config: MergeConfig | None = None) -> list[OcrLine]:
    """``primary`` plus the secondary lines that add text (see the module docstring)."""
    config = config or MergeConfig()
    keep = {"new", "conflict"} if config.keep_conflicts else {"new"}
    return list(primary) + [ln for ln in secondary if classify(ln, primary, config) in keep]
