"""Documents as a stream of page images: images (jpg/png/webp/tiff...) and PDFs (rendered with pypdfium2).

``iter_pages(source, pages="1-3")`` yields :class:`Page` objects one at a time; a PDF page is rendered only
when the consumer asks for it and dropped after, so a long PDF never sits in memory whole. A multi-frame
TIFF gives one page per frame. Bad input raises :class:`DocumentError` (a ``ValueError``) naming the problem:
missing or unreadable file, PDF with no pages, encrypted PDF, a page range outside the document.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .config import InputLimits
from .errors import ImageError, InputError
from .images import ImageInput, bomb_error, load_image, read_image_bytes

DEFAULT_DPI = 200  # PDF points are 1/72 in; 200 dpi is a usual OCR resolution (A4 -> 1654x2339)
_PDF_MAGIC = b"%PDF-"


class DocumentError(InputError):
    """A document vlm can't read: unreadable file, PDF without pages, encrypted PDF, bad page range."""


@dataclass
class Page:
    number: int  # 1-based
    image: Image.Image  # RGB
    count: int  # pages in the whole document


def parse_pages(spec, count: int) -> list[int]:
    """0-based page indices for a 1-based spec like ``"1-3,5"``, ``[1, 2]``, ``3`` or None (all)."""
    if spec is None or spec == "":
        return list(range(count))
    if isinstance(spec, int):
        spec = [spec]
    numbers: list[int] = []
    if isinstance(spec, str):
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                a = int(lo)
                b = int(hi) if sep and hi else (count if sep else a)
            except ValueError:
                raise DocumentError(f"bad page range {spec!r}: use 1-based numbers like '1-3,5'") from None
            if a > b:
                raise DocumentError(f"bad page range {part!r}: start is after end")
            numbers.extend(range(a, b + 1))
    else:
        try:
            numbers = [int(n) for n in spec]
        except (TypeError, ValueError):
            raise DocumentError(f"bad page selection {spec!r}: give 1-based page numbers") from None
    if not numbers:
        raise DocumentError(f"page selection {spec!r} selects no pages")
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise DocumentError(f"page {bad[0]} is out of range: the document has {count} page(s)")
    seen: dict[int, None] = {}
    for n in numbers:
        seen.setdefault(n - 1, None)
    return list(seen)


def _is_pdf(source) -> bool:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:5]) == _PDF_MAGIC
    if isinstance(source, (str, os.PathLike)) and not str(source).startswith("data:"):
        path = Path(source)
        if path.suffix.lower() == ".pdf":
            return True
        try:
            with open(path, "rb") as fh:
                return fh.read(5) == _PDF_MAGIC
        except OSError:
            return False
    return False


def _open_pdf(source, limits: InputLimits):
    import pypdfium2 as pdfium

    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "PDF data"
    else:
        path = Path(source)
        if not path.exists():
            raise DocumentError(f"file not found: {path}")
        if not path.is_file():
            raise DocumentError(f"not a file: {path}")
        data, where = path.read_bytes(), f"PDF {path}"
    if not data:
        raise DocumentError(f"{where} is empty (zero bytes)")
    # Load through the raw API first: pdfium's last-error code is only meaningful right after a failed
    # load (it is not reset on success), and a document that loads with zero pages is no failure.
    import ctypes

    raw = pdfium.raw
    buf = ctypes.create_string_buffer(data, len(data))
    handle = raw.FPDF_LoadMemDocument64(buf, len(data), None)
    if not handle:
        code = raw.FPDF_GetLastError()
        if code == raw.FPDF_ERR_PASSWORD:
            raise DocumentError(f"{where} is encrypted (password protected); decrypt it first")
        if code == raw.FPDF_ERR_SECURITY:
            raise DocumentError(f"{where} uses an unsupported security handler")
        raise DocumentError(f"{where} is not a readable PDF (corrupt or truncated)")
    try:
        pages = raw.FPDF_GetPageCount(handle)
    finally:
        raw.FPDF_CloseDocument(handle)
    if pages < 1:
        raise DocumentError(f"{where} has no pages")
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise DocumentError(f"{where} is not a readable PDF: {exc}") from None


def _render_scale(width_pt: float, height_pt: float, dpi: float, limits: InputLimits) -> float:
    scale = dpi / 72.0
    pixels = width_pt * height_pt * scale * scale
    if pixels > limits.max_image_pixels:
        scale *= (limits.max_image_pixels / pixels) ** 0.5
    return scale


def _pdf_pages(source, pages, dpi: float, limits: InputLimits) -> Iterator[Page]:
    pdf = _open_pdf(source, limits)
    try:
        count = len(pdf)
        if count == 0:
            raise DocumentError("the PDF has no pages")
        for index in parse_pages(pages, count):
            page = pdf[index]
            try:
                w, h = page.get_size()
                if w <= 0 or h <= 0:
                    raise DocumentError(f"page {index + 1} has an empty size ({w}x{h} pt)")
                bitmap = page.render(scale=_render_scale(w, h, dpi, limits))
                try:
                    image = bitmap.to_pil().convert("RGB")
                finally:
                    bitmap.close()
            finally:
                page.close()
            yield Page(index + 1, image, count)
    finally:
        pdf.close()


def _image_pages(source, pages, limits: InputLimits) -> Iterator[Page]:
    if isinstance(source, Image.Image):
        yield from (Page(1, load_image(source, limits), 1) for _ in parse_pages(pages, 1))
        return
    try:
        data = read_image_bytes(source, limits)
    except ImageError as exc:
        raise DocumentError(str(exc).replace("image file", "file", 1)) from None
    try:
        img = Image.open(io.BytesIO(data))
        count = getattr(img, "n_frames", 1)
    except Image.DecompressionBombError as exc:
        raise DocumentError(str(bomb_error(exc, limits))) from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for non-images
        raise DocumentError("not an image or PDF: the data is in no format vlm can read") from None
    if count <= 1:
        for _ in parse_pages(pages, 1):
            yield Page(1, load_image(data, limits), 1)
        return
    selected = parse_pages(pages, count)
    for index in selected:  # multi-frame TIFF/GIF: one page per frame
        try:
            img.seek(index)
            frame = img.copy()
        except (EOFError, OSError) as exc:
            raise DocumentError(f"frame {index + 1} is unreadable: {exc}") from None
        yield Page(index + 1, load_image(frame, limits), count)


def iter_pages(
    source: ImageInput, pages=None, *, dpi: float = DEFAULT_DPI, limits: InputLimits | None = None
) -> Iterator[Page]:
    """Yield the selected pages of an image or PDF one at a time (1-based ``pages``: ``"1-3,5"``)."""
    limits = limits or InputLimits()
    if dpi <= 0:
        raise DocumentError(f"dpi must be positive, got {dpi}")
    if _is_pdf(source):
        return _pdf_pages(source, pages, dpi, limits)
    return _image_pages(source, pages, limits)


def ocr_document(source: ImageInput, pages=None, *, dpi: float | None = None, engine: str | None = None) -> list:
    """OCR lines of every selected page, in page order then reading order (``line.page`` is 1-based).

    ``engine``: the OCR engine (:data:`vlm.ocr.OcrEngine`; default :data:`vlm.ocr.DEFAULT_ENGINE`)."""
    from dataclasses import replace

    from .ocr import check_engine, run_ocr

    engine = check_engine(engine)
    out = []
    for page in iter_pages(source, pages, **({} if dpi is None else {"dpi": dpi})):
        out.extend(replace(line, page=page.number) for line in run_ocr(page.image, engine=engine))
    return out
