"""Example images for the UI, drawn with Pillow at start-up (no dataset files ship with the server)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class Example:
    name: str
    question: str


CHAT_EXAMPLES = [
    Example("shapes", "What shapes and colours are in this picture?"),
    Example("chart", "Which bar is the tallest?"),
    Example("street_sign", "What does the sign say?"),
]
EXTRACT_EXAMPLES = [Example("receipt", "company, date, address, total")]


def _font(size: int):
    return ImageFont.load_default(size=size)


def shapes() -> Image.Image:
    img = Image.new("RGB", (320, 240), (245, 245, 240))
    d = ImageDraw.Draw(img)
    d.ellipse((20, 60, 120, 160), fill=(220, 40, 40))
    d.rectangle((140, 60, 220, 140), fill=(40, 80, 220))
    d.polygon([(250, 160), (300, 160), (275, 70)], fill=(40, 170, 60))
    return img


def chart() -> Image.Image:
    img = Image.new("RGB", (320, 240), "white")
    d = ImageDraw.Draw(img)
    d.line((40, 200, 300, 200), fill="black", width=2)
    d.line((40, 20, 40, 200), fill="black", width=2)
    for i, (label, value, colour) in enumerate([("A", 60, "#4c72b0"), ("B", 150, "#dd8452"), ("C", 95, "#55a868")]):
        x = 70 + i * 80
        d.rectangle((x, 200 - value, x + 40, 199), fill=colour)
        d.text((x + 14, 206), label, fill="black", font=_font(16))
    d.text((90, 4), "Sales by region", fill="black", font=_font(16))
    return img


def street_sign() -> Image.Image:
    img = Image.new("RGB", (320, 240), (135, 190, 235))
    d = ImageDraw.Draw(img)
    d.rectangle((150, 120, 166, 240), fill=(120, 120, 120))
    d.rounded_rectangle((40, 40, 280, 130), radius=12, fill=(20, 110, 60), outline="white", width=4)
    d.text((64, 66), "MAIN STREET", fill="white", font=_font(30))
    return img


def receipt() -> Image.Image:
    img = Image.new("RGB", (360, 520), "white")
    d = ImageDraw.Draw(img)
    f, big = _font(16), _font(22)
    lines = [
        (big, "SUNRISE BAKERY SDN BHD"), (f, "12 Jalan Bunga, 50450 Kuala Lumpur"), (f, "Tel: 03-2145 8890"),
        (f, ""), (f, "Date: 14/03/2018   Time: 10:42"), (f, "Receipt no: 000482"), (f, "-" * 40),
        (f, "Croissant x2              7.00"), (f, "Coffee (L)                6.50"), (f, "Banana cake               4.20"),
        (f, "-" * 40), (big, "TOTAL            17.70"), (f, "Cash                     20.00"),
        (f, "Change                    2.30"), (f, ""), (f, "Thank you, please come again!"),
    ]
    y = 20
    for font, text in lines:
        d.text((20, y), text, fill="black", font=font)
        y += 28 if font is big else 24
    return img


_DRAW = {"shapes": shapes, "chart": chart, "street_sign": street_sign, "receipt": receipt}


def write_examples(folder: str | Path | None = None) -> dict[str, Path]:
    """Draw every example into ``folder`` (a fresh temp dir by default); returns name -> PNG path."""
    folder = Path(folder or tempfile.mkdtemp(prefix="vlm-serve-examples-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in _DRAW.items():
        path = folder / f"{name}.png"
        draw().save(path)
        paths[name] = path
    return paths
