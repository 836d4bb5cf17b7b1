"""The Tesseract OCR engine (through ``tesserocr``): an RGB image -> :class:`vlm.ocr.OcrLine` objects.

Contract:

- :func:`tesseract_lines` returns lines in Tesseract's own order (callers apply reading order), each with
  its axis-aligned box in the *given* image's pixels, the text with whitespace runs collapsed, and a score
  in [0, 1] (the mean of Tesseract's word confidences / 100). An image without text gives ``[]``.
- A Tesseract text line is split into several :class:`OcrLine` where the gap between two words is wider
  than ``TesseractConfig.gap`` line heights, so a receipt row ``TOTAL      9.00`` gives two cells, as the
  rapidocr engine does.
- :class:`TesseractConfig` holds every setting that changes the output; :meth:`TesseractConfig.key` goes
  into the OCR cache key, so changing a setting never reuses stale entries.
- The binding is ``tesserocr`` (its wheel bundles libtesseract); the language data comes from Debian's
  ``tesseract-ocr-eng`` (``/usr/share/tesseract-ocr/*/tessdata``), ``TESSDATA_PREFIX`` or
  ``TesseractConfig.tessdata``. A missing binding or language file raises :class:`vlm.errors.OcrEngineError`
  naming what is missing and how to install it.
- Thread-safe: one Tesseract handle per (tessdata, lang, psm), used under a lock.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from .errors import OcrEngineError
from .ocr_line import OcrLine

TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                 "/usr/share/tessdata", "/usr/local/share/tessdata")
INSTALL_HINT = "apt-get install tesseract-ocr tesseract-ocr-eng"


@dataclass(frozen=True)
class TesseractConfig:
    """Settings of the Tesseract engine. Defaults were chosen on SROIE train receipts (docs/ocr.md)."""

    psm: int = 3  # page segmentation mode: 3 auto, 4 single column, 6 one block, 11 sparse text
    scale: float = 1.0  # resize the image by this factor before OCR (boxes are mapped back)
    binarise: bool = False  # Otsu threshold on the grey image before OCR (Tesseract binarises anyway)
    lang: str = "eng"
    gap: float = 1.5  # split a text line where two words are further apart than this many line heights
    min_confidence: float = 0.0  # drop words whose Tesseract confidence (0-100) is below this
    tessdata: str | None = None  # folder holding LANG.traineddata (default: TESSDATA_PREFIX, then Debian's)

    def __post_init__(self) -> None:
        if self.psm not in range(0, 14):
            raise ValueError(f"psm must be a Tesseract page segmentation mode 0..13, got {self.psm}")
        if not 0.25 <= self.scale <= 4:
            raise ValueError(f"scale must be in [0.25, 4], got {self.scale}")
        if self.gap <= 0:
            raise ValueError(f"gap must be positive, got {self.gap}")
        if not 0 <= self.min_confidence <= 100:
            raise ValueError(f"min_confidence must be in [0, 100], got {self.min_confidence}")

    def key(self) -> str:
        """The settings that change the output, as text (part of the OCR cache key)."""
        return (f"psm{self.psm}-x{self.scale:g}-bin{int(self.binarise)}-{self.lang}-gap{self.gap:g}"
                f"-conf{self.min_confidence:g}")


def find_tessdata(config: TesseractConfig) -> Path:
    """The folder holding ``LANG.traineddata``, or :class:`OcrEngineError` naming where it looked."""
    if config.tessdata is not None:
        candidates = [config.tessdata]
    else:
        candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
        candidates += list(TESSDATA_DIRS)
    for folder in candidates:
        if (Path(folder) / f"{config.lang}.traineddata").is_file():
            return Path(folder)
    raise OcrEngineError(
        f"Tesseract language data {config.lang}.traineddata not found (looked in {', '.join(candidates)}); "
        f"install it with `{INSTALL_HINT}` or point TESSDATA_PREFIX at the folder holding it")


def _tesserocr():
    try:
        import tesserocr
    except ImportError as exc:  # the binding or its bundled libtesseract
        raise OcrEngineError(f"the Tesseract OCR engine needs the Python package tesserocr "
                             f"(pip install 'tesserocr>=2.6.3'): {exc}") from exc
    return tesserocr


_apis: dict[tuple, object] = {}
_lock = threading.Lock()


def tesseract_version() -> str:
    """The libtesseract version the binding runs, e.g. ``"5.5.4"``."""
    return _tesserocr().tesseract_version().split()[1]


def _api(config: TesseractConfig):
    tesserocr = _tesserocr()
    folder = find_tessdata(config)
    key = (str(folder), config.lang, config.psm)
    if key not in _apis:
        try:
            _apis[key] = tesserocr.PyTessBaseAPI(path=str(folder) + os.sep, lang=config.lang, psm=config.psm)
        except RuntimeError as exc:
            raise OcrEngineError(f"Tesseract failed to start with {config.lang}.traineddata from {folder}: {exc}; "
                                 f"reinstall it with `{INSTALL_HINT}`") from exc
    return _apis[key]


def _prepare(img, config: TesseractConfig):
    if config.scale != 1.0:
        from PIL import Image

        size = (max(1, round(img.width * config.scale)), max(1, round(img.height * config.scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    if config.binarise:
        import numpy as np
        from PIL import Image

        grey = np.asarray(img.convert("L"))
        img = Image.fromarray(np.where(grey > otsu_threshold(grey), 255, 0).astype(np.uint8))
    return img


def otsu_threshold(grey) -> int:
    """Otsu's threshold of a uint8 grey image (the level that maximises between-class variance)."""
    import numpy as np

    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mean0 = np.divide(m0, w0, out=np.zeros(256), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros(256), where=w1 > 0)
    return int(np.argmax(w0 * w1 * (mean0 - mean1) ** 2))


Word = tuple[str, tuple[float, float, float, float], float]  # text, box, confidence 0-100


def _read_words(img, config: TesseractConfig) -> list[list[Word]]:
    """Tesseract's text lines as lists of words (boxes in the prepared image's pixels)."""
    tesserocr = _tesserocr()
    RIL = tesserocr.RIL
    lines: list[list[Word]] = []
    with _lock:
        api = _api(config)
        api.SetImage(img)
        api.Recognize()
        it = api.GetIterator()
        for word in tesserocr.iterate_level(it, RIL.WORD) if it is not None else ():
            try:
                text = word.GetUTF8Text(RIL.WORD)
            except RuntimeError:  # an empty page: the iterator stands on no word
                continue
            box = word.BoundingBox(RIL.WORD)
            if word.IsAtBeginningOf(RIL.TEXTLINE) or not lines:
                lines.append([])
            if not text or not text.strip() or box is None:
                continue
            conf = float(word.Confidence(RIL.WORD))
            if conf < config.min_confidence:
                continue
            lines[-1].append((" ".join(text.split()), tuple(float(v) for v in box), conf))
        api.Clear()
    return [ln for ln in lines if ln]


def split_at_gaps(words: list[Word], gap: float) -> list[list[Word]]:
    """Cut one text line's words (left to right) where a gap exceeds ``gap`` x the median word height."""
    if not words:
        return []
    words = sorted(words, key=lambda w: w[1][0])
    height = median(max(1.0, w[1][3] - w[1][1]) for w in words)
    groups = [[words[0]]]
    for w in words[1:]:
        if w[1][0] - groups[-1][-1][1][2] > gap * height:
            groups.append([w])
        else:
            groups[-1].append(w)
    return groups


def tesseract_lines(img, config: TesseractConfig | None = None) -> list[OcrLine]:
    """OCR lines of an RGB ``PIL.Image`` (see the module docstring)."""
    config = config or TesseractConfig()
    prepared = _prepare(img, config)
    sx, sy = img.width / prepared.width, img.height / prepared.height
    out = []
    for line in _read_words(prepared, config):
        for group in split_at_gaps(line, config.gap):
            x0 = min(w[1][0] for w in group) * sx
            y0 = min(w[1][1] for w in group) * sy
            x1 = max(w[1][2] for w in group) * sx
            y1 = max(w[1][3] for w in group) * sy
            score = sum(w[2] for w in group) / len(group) / 100.0
            out.append(OcrLine(" ".join(w[0] for w in group), (x0, y0, x1, y1), max(0.0, min(1.0, score))))
    return out
