"""Every Pillow mode and EXIF orientation reaches the model as the RGB picture it shows.

Each case builds an image of a real Flickr8k photo in one mode, writes it in the file formats that carry that
mode (or keeps the ``PIL.Image`` where no format does), reads the stored pixels back with Pillow in their own
mode, computes the expected RGB from them here with numpy (never with Pillow's conversions), and checks
:func:`vlm.images.load_image` from a path, from bytes and from a ``PIL.Image``.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from vlm.config import InputLimits
from vlm.errors import ImageError
from vlm.images import load_image

SUFFIX = {"PNG": "png", "TIFF": "tif", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp"}
WHITE = 255.0


@pytest.fixture(scope="module")
def rgb(photo) -> np.ndarray:
    """The photo, cropped non-square so that a wrong rotation also has the wrong shape."""
    with Image.open(photo) as im:
        return np.asarray(im.convert("RGB").crop((0, 0, im.width, im.height * 5 // 7))).copy()


@pytest.fixture(scope="module")
def gray(rgb) -> np.ndarray:
    return np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


@pytest.fixture(scope="module")
def alpha(rgb) -> np.ndarray:
    """Fully transparent, fully opaque and every level in between, across the picture."""
    h, w = rgb.shape[:2]
    a = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    a[: h // 4] = 0
    a[-h // 4:] = 255
    return a


def _over_white(colour: np.ndarray, a: np.ndarray) -> np.ndarray:
    colour = colour.astype(np.float64)
    if colour.ndim == 2:
        colour = colour[..., None].repeat(3, axis=-1)
    a = a.astype(np.float64)[..., None] / 255.0
    return colour * a + WHITE * (1 - a)


def _gray3(g: np.ndarray) -> np.ndarray:
    return g[..., None].repeat(3, axis=-1).astype(np.float64)


def _cmyk_to_rgb(raw):
    cmy, k = raw[..., :3].astype(np.float64), raw[..., 3:].astype(np.float64)
    return (255 - cmy) * (255 - k) / 255


def _ycbcr_to_rgb(raw):  # JFIF (full range)
    y, cb, cr = (raw[..., i].astype(np.float64) for i in range(3))
    return np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                     y + 1.772 * (cb - 128)], axis=-1)


def _hsv_to_rgb(raw):
    h, s, v = (raw[..., i].astype(np.float64) / 255 for i in range(3))
    h6 = h * 6
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1) * 255


def _lab_to_rgb(raw):
    """Pillow's LAB bytes (L * 255/100, then a and b as signed bytes; D50 as in ICC) -> sRGB (D65), Bradford."""
    lum = raw[..., 0] * 100.0 / 255
    a, b = (raw[..., i].astype(np.uint8).view(np.int8).astype(np.float64) for i in (1, 2))
    fy = (lum + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200
    eps, kappa = 216 / 24389, 24389 / 27

    def finv(t):
        return np.where(t ** 3 > eps, t ** 3, (116 * t - 16) / kappa)

    xyz = np.stack([finv(fx) * 0.9642, np.where(lum > kappa * eps, fy ** 3, lum / kappa), finv(fz) * 0.8249], -1)
    d50_to_d65 = np.array([[0.9555766, -0.0230393, 0.0631636], [-0.0282895, 1.0099416, 0.0210077],
                           [0.0122982, -0.0204830, 1.3299098]])
    to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
    linear = np.clip(xyz @ (to_srgb @ d50_to_d65).T, 0, 1)
    return 255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def _palette(img: Image.Image) -> np.ndarray:
    return np.array(img.getpalette("RGB"), dtype=np.float64).reshape(-1, 3)


def _palette_alpha(img: Image.Image) -> np.ndarray:
    alpha = np.full(256, 255.0)
    trns = img.info.get("transparency")
    if isinstance(trns, int):
        alpha[trns] = 0
    elif isinstance(trns, bytes):
        alpha[: len(trns)] = np.frombuffer(trns, np.uint8)
    return alpha


# name -> (build(rgb, gray, alpha) -> source image in mode name.split()[0], formats that carry the mode (None:
# PIL only), reference(stored pixels, reopened image) -> expected RGB, tolerance in 8-bit levels)
def _cases():
    def p_image(rgb, *_):
        return Image.fromarray(rgb).quantize(64, dither=Image.Dither.NONE)

    def p_keyed(rgb, *_):
        img = p_image(rgb)
        img.info["transparency"] = int(np.asarray(img)[0, 0])  # one palette entry fully transparent (tRNS)
        return img

    def p_alpha_palette(rgb, *_):
        img = p_image(rgb)
        img.info["transparency"] = bytes(range(0, 256, 4))  # 64 entries with 64 alpha levels (tRNS)
        return img

    def pa(rgb, _, a):
        indexed = p_image(rgb)
        out = Image.merge("PA", [Image.fromarray(np.asarray(indexed), "L"), Image.fromarray(a, "L")])
        out.putpalette(indexed.getpalette())
        return out

    def rgba_premultiplied(rgb, _, a):
        return Image.fromarray(np.dstack([rgb, a]), "RGBA").convert("RGBa")

    def la_premultiplied(_, g, a):
        return Image.fromarray(np.dstack([g, a]), "LA").convert("La")

    def cmyk(rgb, *_):
        k = 255 - rgb.max(axis=-1).astype(np.float64)
        cmy = (255 - rgb - k[..., None]) * 255 / np.maximum(255 - k[..., None], 1)
        return Image.fromarray(np.rint(np.dstack([cmy, k])).astype(np.uint8), "CMYK")

    def lab(rgb, *_):
        to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
        return ImageCms.applyTransform(Image.fromarray(rgb), to_lab)

    def i16(_, g, __):
        noise = np.random.default_rng(0).integers(-128, 129, g.shape)  # still rounds to g / 257
        return Image.fromarray(np.clip(g.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16))

    def i16_keyed(_, g, __):
        img = Image.fromarray(g.astype(np.uint16) * 257)
        img.info["transparency"] = int(g[0, 0]) * 257  # 16-bit grey tRNS key
        return img

    def i16b(_, g, __):
        return Image.frombytes("I;16B", g.shape[::-1], (g.astype(">u2") * 257).tobytes())

    def int32(scale, offset):
        return lambda _, g, __: Image.fromarray((g.astype(np.int64) * scale + offset).astype(np.int32), "I")

    def float32(scale, offset):
        return lambda _, g, __: Image.fromarray((g.astype(np.float32) * scale + offset).astype(np.float32), "F")

    def stretched(raw, _):
        raw = raw.astype(np.float64)
        return _gray3((raw - raw.min()) * 255 / (raw.max() - raw.min()))

    def palette_ref(raw, img):
        return _over_white(_palette(img)[raw], _palette_alpha(img)[raw])

    return {
        "1": (lambda _, g, __: Image.fromarray(g > 127), ["PNG", "TIFF", "BMP"], lambda raw, _: _gray3(raw * 255.0), 0),
        "L": (lambda _, g, __: Image.fromarray(g, "L"), ["PNG", "TIFF", "JPEG"], lambda raw, _: _gray3(raw), 0),
        "L tRNS": (lambda _, g, __: _with_info(Image.fromarray(g, "L"), transparency=int(g[0, 0])), ["PNG"],
                   lambda raw, img: _over_white(raw, np.where(raw == img.info["transparency"], 0, 255)), 0),
        "LA": (lambda _, g, a: Image.fromarray(np.dstack([g, a]), "LA"), ["PNG", "TIFF"],
               lambda raw, _: _over_white(raw[..., 0], raw[..., 1]), 1),
        "La": (la_premultiplied, None, lambda raw, _: _gray3(raw[..., 0] + (255.0 - raw[..., 1])), 1),
        "P": (p_image, ["PNG", "TIFF", "GIF"], palette_ref, 0),
        "P tRNS key": (p_keyed, ["PNG", "GIF"], palette_ref, 1),
        "P tRNS alpha": (p_alpha_palette, ["PNG"], palette_ref, 1),
        "PA": (pa, ["TIFF"],
               lambda raw, img: _over_white(_palette(img)[raw[..., 0]], raw[..., 1]), 1),
        "RGB": (lambda rgb, *_: Image.fromarray(rgb), ["PNG", "TIFF", "JPEG", "WEBP"],
                lambda raw, _: raw.astype(np.float64), 0),
        "RGB tRNS": (lambda rgb, *_: _with_info(Image.fromarray(rgb), transparency=tuple(int(v) for v in rgb[0, 0])),
                     ["PNG"],
                     lambda raw, img: _over_white(raw, np.where((raw == img.info["transparency"]).all(-1), 0, 255)), 0),
        "RGBA": (lambda rgb, _, a: Image.fromarray(np.dstack([rgb, a]), "RGBA"), ["PNG", "TIFF", "WEBP"],
                 lambda raw, _: _over_white(raw[..., :3], raw[..., 3]), 1),
        "RGBa": (rgba_premultiplied, None, lambda raw, _: raw[..., :3] + (255.0 - raw[..., 3:]), 1),
        "RGBX": (lambda rgb, *_: Image.fromarray(rgb).convert("RGBX"), None,
                 lambda raw, _: raw[..., :3].astype(np.float64), 0),
        "CMYK": (cmyk, ["TIFF", "JPEG"], lambda raw, _: _cmyk_to_rgb(raw), 1),
        "YCbCr": (lambda rgb, *_: Image.fromarray(rgb).convert("YCbCr"), None,
                  lambda raw, _: _ycbcr_to_rgb(raw), 1),
        # littlecms interpolates 8-bit Lab through tables: a few saturated pixels are off by up to 6 (mean 0.13)
        "LAB": (lab, ["TIFF"], lambda raw, _: _lab_to_rgb(raw), 6),
        "HSV": (lambda rgb, *_: Image.fromarray(rgb).convert("HSV"), None, lambda raw, _: _hsv_to_rgb(raw), 1),
        "I;16": (i16, ["PNG", "TIFF"], lambda raw, _: _gray3(raw / 257.0), 0),
        "I;16 tRNS": (i16_keyed, ["PNG"],
                      lambda raw, img: _over_white(raw / 257.0, np.where(raw == img.info["transparency"], 0, 255)), 0),
        "I;16B": (i16b, ["TIFF"], lambda raw, _: _gray3(raw / 257.0), 0),
        "I 16-bit": (int32(257, 0), ["TIFF"], lambda raw, _: _gray3(raw / 257.0), 0),
        "I 8-bit": (int32(1, 0), ["TIFF"], lambda raw, _: _gray3(raw), 0),
        "I signed": (int32(1000, -70000), ["TIFF"], stretched, 0),
        "I 32-bit": (int32(2 ** 24, -2 ** 31), ["TIFF"], stretched, 0),  # max - min overflows int32
        "F unit": (float32(1 / 255, 0), ["TIFF"], lambda raw, _: _gray3(raw.astype(np.float64) * 255), 0),
        "F 8-bit": (float32(1, 0), ["TIFF"], lambda raw, _: _gray3(raw), 0),
        "F 16-bit": (float32(257, 0), ["TIFF"], lambda raw, _: _gray3(raw / 257.0), 0),
        "F signed": (float32(0.03, -2.5), ["TIFF"], stretched, 0),
    }


def _with_info(img: Image.Image, **info) -> Image.Image:
    img.info.update(info)
    return img


CASES = _cases()


def _save(img: Image.Image, fmt: str, path) -> None:
    options = {"lossless": True, "exact": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    if "transparency" in img.info and fmt in ("PNG", "GIF"):
        options["transparency"] = img.info["transparency"]
    img.save(path, fmt, **options)


def _check(actual: Image.Image, expected: np.ndarray, tolerance: int, what: str) -> None:
    assert actual.mode == "RGB", what
    got = np.asarray(actual).astype(int)
    want = np.clip(np.rint(expected), 0, 255).astype(int)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    worst, mean = np.abs(got - want).max(), np.abs(got - want).mean()
    assert worst <= tolerance, f"{what}: off by up to {worst} levels (tolerance {tolerance})"
    assert mean <= 0.75, f"{what}: off by {mean:.2f} levels on average"  # no systematic shift


@pytest.mark.parametrize("name", list(CASES))
def test_mode_becomes_the_rgb_it_shows(name, rgb, gray, alpha, tmp_path):
    build, formats, reference, tolerance = CASES[name]
    source = build(rgb, gray, alpha)
    mode = name.split()[0]
    assert source.mode == mode
    if formats is None:  # no file format stores this mode: it only reaches vlm as a PIL.Image
        before = np.asarray(source).copy()
        _check(load_image(source), reference(np.asarray(source), source), tolerance, f"{name} (PIL)")
        assert (np.asarray(source) == before).all() and source.mode == mode, "load_image changed its input"
        return
    for fmt in formats:
        path = tmp_path / f"{name.replace(' ', '_').replace(';', '')}.{SUFFIX[fmt]}"
        _save(source, fmt, path)
        stored = Image.open(path)
        assert stored.mode == mode, f"{fmt} reopened {name} as {stored.mode}"
        raw = np.asarray(stored)
        if fmt != "JPEG":
            assert (raw == np.asarray(source)).all(), f"{fmt} did not store {name} losslessly"
        expected = reference(raw, stored)
        for label, src in (("path", path), ("bytes", path.read_bytes()), ("PIL", Image.open(path))):
            _check(load_image(src), expected, tolerance, f"{name} as {fmt} from {label}")


def test_references_show_the_photo(rgb, gray, alpha):
    """The references are the photo itself where a mode can hold it (so they are not vacuous)."""
    for name, truth, tolerance in (("CMYK", rgb, 2), ("YCbCr", rgb, 3), ("LAB", rgb, 6), ("HSV", rgb, 3),
                                   ("I;16", _gray3(gray), 0), ("F unit", _gray3(gray), 0),
                                   ("I signed", _gray3(gray), 1)):
        build, *_ = CASES[name]
        got = np.asarray(load_image(build(rgb, gray, alpha))).astype(int)
        if name == "I signed":  # stretched from its own range: the photo's grey, stretched the same way
            truth = _gray3((gray - gray.min()) * 255.0 / (gray.max() - gray.min()))
        assert np.abs(got - np.rint(truth)).max() <= tolerance, name
    transparent = load_image(CASES["RGBA"][0](rgb, gray, alpha))
    h = rgb.shape[0]
    assert (np.asarray(transparent)[: h // 4] == 255).all()  # alpha 0 -> white, not black
    assert (np.asarray(transparent)[-h // 4:] == rgb[-h // 4:]).all()  # alpha 255 -> the photo


def test_sixteen_bit_png_is_not_white(gray, tmp_path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode == "I;16"
    got = np.asarray(load_image(path))
    assert (got == _gray3(gray)).all()
    assert got.mean() < 200


def test_float_image_with_nan_is_rejected(gray):
    values = gray.astype(np.float32) / 255
    values[3, 4] = np.nan
    values[5, 6] = np.inf
    with pytest.raises(ImageError, match="2 NaN or infinite"):
        load_image(Image.fromarray(values, "F"))


# EXIF orientation: the stored pixels -> what a viewer shows (EXIF 2.3, tag 0x0112)
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_exif_orientation(fmt, rgb, tmp_path):
    seen = set()
    for orientation, show in ORIENT.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{SUFFIX[fmt]}"
        options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(rgb).save(path, fmt, exif=exif, **options)
        stored = Image.open(path)
        assert stored.getexif().get(0x0112) == orientation
        # the stored pixels: the photo itself, or for JPEG its decoded (lossy, never auto-rotated) copy
        pixels = np.asarray(stored) if fmt == "JPEG" else rgb
        assert np.abs(pixels.astype(int) - rgb).mean() < 2
        expected = ORIENT[orientation](pixels)
        seen.add(expected.tobytes())
        for label, src in (("path", path), ("bytes", path.read_bytes()), ("PIL", Image.open(path))):
            got = load_image(src)
            _check(got, expected, 0, f"{fmt} orientation {orientation} from {label}")
            assert got.getexif().get(0x0112, 1) == 1, "the orientation must not be applied twice"
    assert len(seen) == 8  # the eight orientations give eight different pictures


def test_exif_orientation_of_a_sixteen_bit_png(gray, alpha, tmp_path):
    """Orientation and mode conversion together: a rotated 16-bit PNG."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path, exif=exif)
    _check(load_image(path), ORIENT[6](_gray3(gray)), 0, "16-bit PNG with orientation 6")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: enough for any size check, nothing to decode."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bomb_errors_quote_vlms_limit():
    limit = InputLimits().max_image_pixels
    pillow_guard = 2 * Image.MAX_IMAGE_PIXELS
    # under Pillow's guard: vlm's own check fires before anything is decoded
    with pytest.raises(ImageError, match=rf"^image is 8000x6000 = 48000000 pixels; the limit is {limit}$"):
        load_image(_png_header(8000, 6000))
    # over Pillow's guard, which fires inside Image.open: re-worded with vlm's limit, not Pillow's
    with pytest.raises(ImageError, match=rf"^image is 400000000 pixels; the limit is {limit}$") as err:
        load_image(_png_header(20000, 20000))
    assert str(pillow_guard) not in str(err.value)
    from vlm.documents import DocumentError, iter_pages  # `vlm extract`/`vlm ocr` open images themselves first

    with pytest.raises(DocumentError, match=rf"^image is 400000000 pixels; the limit is {limit}$"):
        list(iter_pages(_png_header(20000, 20000)))
    small = InputLimits(max_image_pixels=1000)
    with pytest.raises(ImageError, match=r"^image is 400000000 pixels; the limit is 1000$"):
        load_image(_png_header(20000, 20000), small)
    # vlm allows more than Pillow's guard: the error says which limit stopped it
    roomy = InputLimits(max_image_pixels=10**9)
    with pytest.raises(ImageError, match=rf"within vlm's limit of {10**9} but over Pillow's .* of {pillow_guard}"):
        load_image(_png_header(20000, 20000), roomy)


@pytest.mark.real
def test_sixteen_bit_png_gets_the_same_answer_as_eight_bit(gray, tmp_path):
    """vlm-tiny answers a 16-bit PNG of a real photo as it answers the 8-bit one (it used to see white)."""
    from vlm import VLM

    model = VLM.load("vlm-tiny")
    eight, sixteen = tmp_path / "eight.png", tmp_path / "sixteen.png"
    Image.fromarray(gray, "L").save(eight)
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    question = "What is in the picture?"
    answer = model.ask(eight, question, max_new_tokens=8)
    assert model.ask(sixteen, question, max_new_tokens=8) == answer
    white = Image.new("RGB", Image.open(eight).size, "white")  # what the 16-bit PNG used to load as
    assert model.ask(white, question, max_new_tokens=8) != answer
