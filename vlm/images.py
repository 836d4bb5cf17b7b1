"""Turn anything a user may call an image into a checked RGB ``PIL.Image`` that looks as the image does.

Contract of :func:`load_image` (and :func:`to_rgb`, its colour half):

* The EXIF orientation (all 8 values, JPEG/PNG/TIFF/WebP) is applied, so the model sees the picture upright.
* Every Pillow mode becomes RGB:
  - ``1``, ``L``, ``P``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion (``CMYK`` is
    ``(255 - C) * (255 - K) / 255``; ``LAB`` is CIE L*a*b* (D50) -> sRGB; an embedded ICC profile is not applied).
  - Transparency (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, a palette with alpha, a PNG/GIF ``tRNS`` colour
    key) is composited onto **white**, as browsers, viewers and chat UIs show a transparent picture on a light
    page; a fully transparent pixel is white, never the black that dropping the alpha band would leave.
  - High bit depth is scaled, never clipped: ``I;16`` (any byte order) is 16-bit, ``/ 257``. ``I`` (32-bit int)
    and ``F`` (float) take the smallest nominal range that holds all their values: ``[0, 1]`` (``F`` only, the
    float-image convention), ``[0, 255]`` (what Pillow itself gives ``L.convert("I")``), ``[0, 65535]``
    (16-bit data, as 16-bit PNG/TIFF often reach mode ``I``); values outside all of these (negative, or over
    16 bits) are stretched from their own minimum to maximum. ``F`` with NaN or infinite values is rejected.
* Sizes are checked by vlm (``InputLimits``) before any pixel is decoded; if Pillow's own decompression-bomb
  guard (``2 * PIL.Image.MAX_IMAGE_PIXELS``) fires first, its error is re-worded with vlm's limit.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import InputLimits
from .errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]

_DEFAULT_LIMITS = InputLimits()
BACKGROUND = (255, 255, 255)  # what transparent pixels become
_NOMINAL_TOPS = {"I": (255, 65535), "F": (1.0, 255, 65535)}  # see the module docstring


def _decode_data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not payload:
        raise ImageError("data URL has no payload after the comma")
    if ";base64" not in header:
        raise ImageError("data URL must be base64-encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"data URL is not valid base64: {exc}") from None


def read_image_bytes(src: ImageInput, limits: InputLimits = _DEFAULT_LIMITS) -> bytes:
    """Raw encoded bytes of a path, data URL or bytes object."""
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
        where = "image bytes"
    elif isinstance(src, str) and src.startswith("data:"):
        data = _decode_data_url(src)
        where = "data URL"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise ImageError(f"image file not found: {path}")
        if not path.is_file():
            raise ImageError(f"image path is not a file: {path}")
        size = path.stat().st_size
        if size > limits.max_image_bytes:
            raise ImageError(f"image file {path} is {size} bytes; the limit is {limits.max_image_bytes}")
        data = path.read_bytes()
        where = f"image file {path}"
    else:
        raise ImageError(
            f"unsupported image type {type(src).__name__}; give a path, PIL.Image, bytes or a base64 data URL"
        )
    if not data:
        raise ImageError(f"{where} is empty (zero bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageError(f"{where} is {len(data)} bytes; the limit is {limits.max_image_bytes}")
    return data


def _check_pixels(width: int, height: int, limits: InputLimits) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}"
        )


def bomb_error(exc: Image.DecompressionBombError, limits: InputLimits) -> ImageError:
    """Pillow's guard fired before vlm's check could: say it with vlm's limit (and Pillow's, if that is lower)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow: "Image size (N pixels) exceeds limit of M ..."
    guard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if found is None:
        size = f"more than {guard} pixels"
    elif int(found[1]) <= limits.max_image_pixels:
        return ImageError(
            f"image is {int(found[1])} pixels: within vlm's limit of {limits.max_image_pixels} but over Pillow's "
            f"decompression-bomb guard of {guard} (2 * PIL.Image.MAX_IMAGE_PIXELS); raise that to accept it"
        )
    else:
        size = f"{int(found[1])} pixels"
    return ImageError(f"image is {size}; the limit is {limits.max_image_pixels}")


def _gray_from_high_depth(img: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` or ``F`` -> RGB, scaled as the module docstring says (transparent key -> white)."""
    values = np.asarray(img)
    if img.mode == "F" and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ImageError(f"float image (mode F) has {bad} NaN or infinite pixel values; vlm needs finite values")
    low, high = float(values.min()), float(values.max())  # float: int32 max - min can overflow
    if img.mode.startswith("I;16"):
        low, top = 0.0, 65535.0
    else:
        fits = [t for t in _NOMINAL_TOPS[img.mode] if low >= 0 and high <= t]
        low, top = (0.0, fits[0]) if fits else (low, high)
    span = (top - low) or 1.0  # a constant image outside every nominal range becomes black
    gray = np.rint((values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / span))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, int):  # a 16-bit PNG tRNS grey key
        gray[values == key] = BACKGROUND[0]
    return Image.fromarray(gray).convert("RGB")


def _on_background(img: Image.Image) -> Image.Image:
    """Any mode with transparency -> RGB composited onto :data:`BACKGROUND`."""
    rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """The RGB image that ``img`` (any Pillow mode, already loaded and upright) shows. See the module docstring."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _gray_from_high_depth(img)
    if img.has_transparency_data:
        return _on_background(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(src: ImageInput, limits: InputLimits = _DEFAULT_LIMITS) -> Image.Image:
    """Load and validate one image, returning an upright RGB ``PIL.Image`` (see the module docstring).

    Raises :class:`ImageError` (a ``ValueError``) naming the problem: missing file, zero bytes,
    not an image, corrupt data, or over the byte/pixel limits. A ``PIL.Image`` given in is never modified.
    """
    if isinstance(src, Image.Image):
        _check_pixels(*src.size, limits)
        img, in_place = src, False
    else:
        data = read_image_bytes(src, limits)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("not an image: the data is in no format Pillow can read") from None
        except Image.DecompressionBombError as exc:
            raise bomb_error(exc, limits) from None
        except (OSError, SyntaxError, ValueError) as exc:  # a known format whose header is garbage
            raise ImageError(f"corrupt image: {exc}") from None
        _check_pixels(*img.size, limits)
        in_place = True
    try:
        img.load()
        upright = ImageOps.exif_transpose(img, in_place=in_place)  # None when done in place
    except Image.DecompressionBombError as exc:
        raise bomb_error(exc, limits) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    return to_rgb(img if upright is None else upright)
