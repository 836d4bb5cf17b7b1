"""Text lines of an image, with boxes, in reading order, from a choice of OCR engines (CPU).

``run_ocr(image, engine=...)`` returns :class:`OcrLine` objects sorted into reading order (see
:func:`reading_order`). Engines (:data:`OcrEngine`):

- ``"rapidocr"``: PP-OCRv6 small through rapidocr's ONNX models. ``VLM_OCR_THREADS`` sets the number of
  onnxruntime threads (default: up to 4);
- ``"tesseract"``: Tesseract through tesserocr (:mod:`vlm.ocr_tesseract`, settings in
  :class:`~vlm.ocr_tesseract.TesseractConfig`);
- ``"both"``: both engines, their lines combined by :func:`vlm.ocr_merge.merge_lines`.

:data:`DEFAULT_ENGINE` is the one chosen by the SROIE measurements in docs/ocr.md. Results are cached per
engine and image content: the key is the sha256 of the decoded RGB pixels plus size and the engine's
version string (engine name and settings), kept in memory and as JSON under ``vlm.registry.cache_dir()/ocr``.
``"both"`` caches each engine's lines and merges them on every call. A missing engine raises
:class:`vlm.errors.OcrEngineError`; an unknown engine name a ``ValueError``.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Literal, get_args

from .images import ImageInput, load_image
from .ocr_line import OcrLine

if TYPE_CHECKING:
    from .ocr_merge import MergeConfig
    from .ocr_tesseract import TesseractConfig

OcrEngine = Literal["rapidocr", "tesseract", "both"]
ENGINES: tuple[str, ...] = get_args(OcrEngine)
DEFAULT_ENGINE: OcrEngine = "rapidocr"

# Bump when the rapidocr settings change, so stale cache entries are not reused. The cache holds the engine's
# lines; reading order is applied on every call (it is cheap and ignores the stored order), so ordering
# changes need no bump. ("order2" in the name is historical: early entries were stored pre-sorted.)
OCR_VERSION = "rapidocr3-ppocrv6-order2"
TESSERACT_VERSION = "tesseract1"  # bump when vlm.ocr_tesseract's line building changes
_MEMORY_ENTRIES = 256


def check_engine(engine: str | None) -> OcrEngine:
    """``engine`` as an :data:`OcrEngine` (``None`` -> :data:`DEFAULT_ENGINE`), or a ``ValueError`` naming
    the choices."""
    if engine is None:
        return DEFAULT_ENGINE
    if engine not in ENGINES:
        raise ValueError(f"unknown OCR engine {engine!r}; choose from {', '.join(ENGINES)}")
    return engine  # type: ignore[return-value]


# -- engines --------------------------------------------------------------------------------------
_engine = None
_engine_lock = threading.Lock()
_memory: OrderedDict[str, list[OcrLine]] = OrderedDict()
_stats = {"engine_runs": 0, "memory_hits": 0, "disk_hits": 0, "rapidocr_runs": 0, "tesseract_runs": 0}


def _get_engine():
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                from rapidocr import RapidOCR
            except ImportError as exc:
                from .errors import OcrEngineError

                raise OcrEngineError(f"the rapidocr OCR engine needs the Python package rapidocr "
                                     f"(pip install 'rapidocr>=3.4'): {exc}") from exc

            threads = int(os.environ.get("VLM_OCR_THREADS", min(4, os.cpu_count() or 1)))
            _engine = RapidOCR(params={
                "Global.log_level": "warning",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            })
        return _engine


def ocr_stats() -> dict:
    """How often the OCR engines ran (in all and per engine) and how often the caches answered (this process)."""
    return dict(_stats)


def clear_memory_cache() -> None:
    _memory.clear()


def _cache_path(key: str) -> Path:
    from .registry import cache_dir

    return cache_dir() / "ocr" / key[:2] / f"{key}.json"


def image_key(img, version: str = OCR_VERSION) -> str:
    """Content key of a loaded RGB image: sha256 of its pixels, size and the engine's version string."""
    h = hashlib.sha256()
    h.update(f"{version}|{img.mode}|{img.size[0]}x{img.size[1]}|".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def engine_version(engine: Literal["rapidocr", "tesseract"], tesseract: "TesseractConfig | None" = None) -> str:
    """The cache version string of one engine with its settings."""
    if engine == "rapidocr":
        return OCR_VERSION
    from .ocr_tesseract import TesseractConfig, tesseract_version

    return f"{TESSERACT_VERSION}-{tesseract_version()}-{(tesseract or TesseractConfig()).key()}"


def _rapidocr_lines(img) -> list[OcrLine]:
    engine = _get_engine()
    out = engine(img)
    if out.txts is None or out.boxes is None:
        return []
    lines = []
    for poly, text, score in zip(out.boxes, out.txts, out.scores):
        text = " ".join(str(text).split())
        if not text:
            continue
        xs, ys = [float(p[0]) for p in poly], [float(p[1]) for p in poly]
        lines.append(OcrLine(text, (min(xs), min(ys), max(xs), max(ys)), float(score)))
    return lines


def _raw_ocr(img, engine: Literal["rapidocr", "tesseract"] = "rapidocr",
             tesseract: "TesseractConfig | None" = None) -> list[OcrLine]:
    if engine == "rapidocr":
        lines = _rapidocr_lines(img)
    else:
        from .ocr_tesseract import tesseract_lines

        lines = tesseract_lines(img, tesseract)
    _stats["engine_runs"] += 1
    _stats[f"{engine}_runs"] += 1
    return lines


def _engine_lines(img, engine: Literal["rapidocr", "tesseract"], cache: bool,
                  tesseract: "TesseractConfig | None") -> list[OcrLine]:
    """One engine's lines of a loaded image (engine order), through the memory and disk caches."""
    if not cache:
        return _raw_ocr(img, engine, tesseract)
    key = image_key(img, engine_version(engine, tesseract))
    if key in _memory:
        _memory.move_to_end(key)
        _stats["memory_hits"] += 1
        return [OcrLine(**asdict(line)) for line in _memory[key]]
    path = _cache_path(key)
    if path.is_file():
        try:
            lines = [OcrLine.from_dict(d) for d in json.loads(path.read_text())]
        except (ValueError, KeyError, TypeError):
            lines = None  # a damaged entry: run OCR again and overwrite it
        if lines is not None:
            _stats["disk_hits"] += 1
            _remember(key, lines)
            return lines
    lines = _raw_ocr(img, engine, tesseract)
    _remember(key, lines)
    _write_disk(key, lines)
    return lines


def run_ocr(image: ImageInput, *, engine: OcrEngine | None = None, cache: bool = True,
            tesseract: "TesseractConfig | None" = None, merge: "MergeConfig | None" = None) -> list[OcrLine]:
    """OCR lines of one image in reading order. Accepts anything :func:`vlm.images.load_image` does.

    ``engine``: ``"rapidocr"``, ``"tesseract"`` or ``"both"`` (default :data:`DEFAULT_ENGINE`);
    ``tesseract``/``merge``: settings of the Tesseract engine and of the ``"both"`` combination (defaults:
    the measured choices). An image without text gives ``[]``. Results are cached per engine and image
    content (memory and disk) unless ``cache=False``.
    """
    engine = check_engine(engine)
    img = load_image(image)
    if engine != "both":
        return reading_order(_engine_lines(img, engine, cache, tesseract))
    from .ocr_merge import MergeConfig, merge_lines

    merge = merge or MergeConfig()
    other = "tesseract" if merge.primary == "rapidocr" else "rapidocr"
    primary = _engine_lines(img, merge.primary, cache, tesseract)
    return reading_order(merge_lines(primary, _engine_lines(img, other, cache, tesseract), merge))


def _remember(key: str, lines: list[OcrLine]) -> None:
    _memory[key] = [OcrLine(**asdict(line)) for line in lines]
    _memory.move_to_end(key)
    while len(_memory) > _MEMORY_ENTRIES:
        _memory.popitem(last=False)


def _write_disk(key: str, lines: list[OcrLine]) -> None:
    path = _cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps([line.to_dict() for line in lines], ensure_ascii=False))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache is not an error: OCR still works, just uncached


# -- reading order --------------------------------------------------------------------------------
# Rules (documented in docs and tested):
# 1. Lines are grouped into rows: taken by vertical centre, a line joins the current row when its centre
#    lies between the median top and median bottom of the row's lines. Rows go top to bottom, lines in a
#    row left to right.
# 2. A run of consecutive rows that share an empty vertical band (a gutter at least one median line height
#    wide that no line crosses), with the lines on each side starting at the same x (left-aligned text
#    columns), is a multi-column block when both sides hold at least three lines and are prose-like
#    (median length >= 8 characters, median share of letters >= 0.6). Such a block is read column by
#    column (left column top to bottom, then the right one; recursively for 3+ columns). Receipt rows
#    like "TOTAL      RM 33.92" have a gutter too, but their amounts are not prose, so they stay rows.

_MIN_COLUMN_CHARS = 8
_MIN_COLUMN_LINES = 3
_MIN_COLUMN_LETTERS = 0.6


def _height(line: OcrLine) -> float:
    return max(1.0, line.box[3] - line.box[1])


def _group_rows(lines: list[OcrLine]) -> list[list[OcrLine]]:
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: ((ln.box[1] + ln.box[3]) / 2, ln.box[0])):
        if rows:
            row = rows[-1]
            # the row's band is its lines' median top..median bottom, so one tall box can't chain two rows
            top, bottom = median(ln.box[1] for ln in row), median(ln.box[3] for ln in row)
            if top <= (line.box[1] + line.box[3]) / 2 <= bottom:
                row.append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda ln: ln.box[0]) for row in rows]


def _free_bands(row: list[OcrLine], lo: float, hi: float) -> list[tuple[float, float]]:
    """Horizontal intervals inside (lo, hi) that no line of ``row`` covers."""
    bands, x = [], lo
    for ln in sorted(row, key=lambda ln: ln.box[0]):
        if ln.box[0] > x:
            bands.append((x, ln.box[0]))
        x = max(x, ln.box[2])
    if hi > x:
        bands.append((x, hi))
    return bands


def _intersect(a: list[tuple[float, float]], b: list[tuple[float, float]], min_width: float):
    out = []
    for a0, a1 in a:
        for b0, b1 in b:
            lo, hi = max(a0, b0), min(a1, b1)
            if hi - lo >= min_width:
                out.append((lo, hi))
    return out


def _letter_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / max(1, len(chars))


def _is_text_column(lines: list[OcrLine]) -> bool:
    """Prose-like: enough lines, long ones, mostly letters (amount columns like "RM 33.92" are not)."""
    return (
        len(lines) >= _MIN_COLUMN_LINES
        and median(len(ln.text) for ln in lines) >= _MIN_COLUMN_CHARS
        and median(_letter_share(ln.text) for ln in lines) >= _MIN_COLUMN_LETTERS
    )


def _column_split(rows: list[list[OcrLine]], min_gap: float):
    """A run of rows from rows[0] that reads as two text columns: ``(n_rows, left, right)`` or None.

    The run shares a gutter (an empty vertical band at least ``min_gap`` wide), and on each side the lines
    start at the same x as on the first row (text columns are left-aligned; tolerance 1.5 line heights).
    """
    if len(rows) < 2 or len(rows[0]) < 2:
        return None
    lo = min(ln.box[0] for row in rows for ln in row)
    hi = max(ln.box[2] for row in rows for ln in row)
    tol = 1.5 * min_gap
    first = rows[0]
    candidates = [g for g in _free_bands(first, lo, hi) if g[0] > lo and g[1] < hi and g[1] - g[0] >= min_gap]
    for g0, g1 in sorted(candidates, key=lambda g: g[0] - g[1]):
        lx = min(ln.box[0] for ln in first if ln.box[2] <= g0)
        rx = min(ln.box[0] for ln in first if ln.box[0] >= g1)
        gutter, end = [(g0, g1)], 1
        for row in rows[1:]:
            nxt = _intersect(gutter, _free_bands(row, lo, hi), min_gap)
            if not nxt:
                break
            left = [ln for ln in row if ln.box[2] <= nxt[0][0]]
            right = [ln for ln in row if ln.box[0] >= nxt[0][1]]
            if left and abs(left[0].box[0] - lx) > tol or right and abs(right[0].box[0] - rx) > tol:
                break
            gutter, end = nxt[:1], end + 1
        if end < 2:
            continue
        block = [ln for r in rows[:end] for ln in r]
        left = [ln for ln in block if ln.box[2] <= gutter[0][0] + 1e-6]
        right = [ln for ln in block if ln.box[0] >= gutter[0][1] - 1e-6]
        if _is_text_column(left) and _is_text_column(right):
            return end, left, right
    return None


def _order(lines: list[OcrLine]) -> list[OcrLine]:
    if len(lines) < 2:
        return list(lines)
    rows = _group_rows(lines)
    min_gap = median(_height(ln) for ln in lines)
    out: list[OcrLine] = []
    i = 0
    while i < len(rows):
        split = _column_split(rows[i:], min_gap)
        if split is None:
            out.extend(rows[i])
            i += 1
            continue
        n, left, right = split
        out.extend(_order(left))
        out.extend(_order(right))
        i += n
    return out


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Sort OCR lines into reading order: rows top to bottom, text columns one after another."""
    return _order(lines)


def same_row(a: OcrLine, b: OcrLine) -> bool:
    """Whether ``b`` continues ``a``'s row in reading order (vertical overlap and to its right)."""
    overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    return a.page == b.page and b.box[0] >= a.box[2] - 0.5 * _height(a) and \
        overlap >= 0.5 * min(_height(a), _height(b))
