"""Turn anything a user may call an image into a checked RGB ``PIL.Image``."""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from .config import InputLimits
from .errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]

# We check sizes ourselves (with a clear message) before Pillow decodes anything; its own
# decompression-bomb guard stays as a second line of defence.
_DEFAULT_LIMITS = InputLimits()


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


def load_image(src: ImageInput, limits: InputLimits = _DEFAULT_LIMITS) -> Image.Image:
    """Load and validate one image, returning an RGB ``PIL.Image``.

    Raises :class:`ImageError` (a ``ValueError``) naming the problem: missing file, zero bytes,
    not an image, corrupt data, or over the byte/pixel limits.
    """
    if isinstance(src, Image.Image):
        _check_pixels(*src.size, limits)
        return src.convert("RGB") if src.mode != "RGB" else src
    data = read_image_bytes(src, limits)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image: the data is in no format Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image rejected as a decompression bomb: {exc}") from None
    _check_pixels(*img.size, limits)
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image rejected as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    return img.convert("RGB")
