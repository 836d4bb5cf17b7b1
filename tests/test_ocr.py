"""OCR: rapidocr lines with boxes, reading order (rows, text columns), the compact text format, the cache."""
from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw, ImageFont

from vlm.extract.prompts import format_ocr
from vlm.ocr import OcrLine, clear_memory_cache, ocr_stats, reading_order, run_ocr

LEFT = ["Left column first line here", "apples grow on many trees", "the second paragraph starts",
        "left side closing sentence"]
RIGHT = ["Right column opening words", "bananas are yellow fruits", "more text about the garden",
         "right side final statement"]


def norm(s: str) -> str:
    return " ".join(s.lower().split())


@pytest.fixture(scope="module")
def two_column_page() -> Image.Image:
    """A title over two left-aligned text columns, then receipt-like label/amount rows."""
    font = ImageFont.load_default(size=24)
    img = Image.new("RGB", (1000, 560), "white")
    d = ImageDraw.Draw(img)
    d.text((50, 25), "Quarterly Report of the Garden Club", font=font, fill="black")
    for i, (a, b) in enumerate(zip(LEFT, RIGHT)):
        d.text((50, 100 + i * 46), a, font=font, fill="black")
        d.text((540, 100 + i * 46), b, font=font, fill="black")
    d.text((50, 330), "TOTAL", font=font, fill="black")
    d.text((820, 330), "9.00", font=font, fill="black")
    d.text((50, 376), "CASH", font=font, fill="black")
    d.text((808, 376), "10.00", font=font, fill="black")
    return img


@pytest.fixture(scope="module")
def two_column_lines(two_column_page) -> list[OcrLine]:
    return run_ocr(two_column_page)


def test_two_columns_read_column_by_column(two_column_lines):
    texts = [norm(line.text) for line in two_column_lines]
    expected = ["quarterly report of the garden club"] + [norm(t) for t in LEFT + RIGHT]
    # rapidocr reads each synthetic line as one line, verbatim
    assert texts[: len(expected)] == expected
    for line in two_column_lines:
        x0, y0, x1, y1 = line.box
        assert 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 560 and 0.5 < line.score <= 1


def test_receipt_rows_stay_rows(two_column_lines):
    text = format_ocr(two_column_lines)
    assert text.splitlines()[-2:] == ["TOTAL\t9.00", "CASH\t10.00"]
    assert "\t" not in "\n".join(text.splitlines()[:-2])  # column lines are separate rows


def test_reading_order_rules_on_boxes():
    def line(text, x0, y0, x1, y1):
        return OcrLine(text, (x0, y0, x1, y1), 1.0)

    # a 3-column newspaper block: read column after column
    cols = [line(f"column {c} line {r} text", 20 + 300 * c, 10 + 30 * r, 250 + 300 * c, 30 + 30 * r)
            for r in range(3) for c in range(3)]
    order = [ln.text for ln in reading_order(list(reversed(cols)))]
    assert order == [f"column {c} line {r} text" for c in range(3) for r in range(3)]
    # item rows with amounts on the right stay rows, lines in a row go left to right
    rows = [line("SUNLIGHT DISHWASHING 900ML", 10, 10, 300, 30), line("12.90", 500, 12, 560, 30),
            line("KF MODELLING CLAY KIDDY FISH", 10, 40, 320, 60), line("9.00", 510, 41, 560, 60)]
    assert [ln.text for ln in reading_order(rows[::-1])] == [ln.text for ln in rows]
    assert format_ocr(reading_order(rows)) == "SUNLIGHT DISHWASHING 900ML\t12.90\nKF MODELLING CLAY KIDDY FISH\t9.00"
    assert reading_order([]) == []


def test_image_without_text_gives_no_lines():
    assert run_ocr(Image.new("RGB", (320, 240), "white")) == []
    assert format_ocr([]) == ""


def test_cache_skips_ocr_on_second_call(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    font = ImageFont.load_default(size=28)
    img = Image.new("RGB", (420, 90), "white")
    ImageDraw.Draw(img).text((15, 25), f"Invoice {tmp_path.name[-6:]}", font=font, fill="black")
    runs = ocr_stats()["engine_runs"]
    first = run_ocr(img)
    assert ocr_stats()["engine_runs"] == runs + 1 and first
    again = run_ocr(img.copy())  # same pixels, another object: memory cache
    assert ocr_stats()["engine_runs"] == runs + 1 and again == first
    clear_memory_cache()
    png = tmp_path / "same.png"
    img.save(png)
    disk_hits = ocr_stats()["disk_hits"]
    from_disk = run_ocr(png)  # same content from a file, memory cleared: disk cache
    assert ocr_stats()["engine_runs"] == runs + 1 and ocr_stats()["disk_hits"] == disk_hits + 1
    assert [ln.text for ln in from_disk] == [ln.text for ln in first]
    entries = list((tmp_path / "ocr").rglob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())[0]["text"] == first[0].text
    run_ocr(img, cache=False)
    assert ocr_stats()["engine_runs"] == runs + 2


def test_real_receipt_key_values_in_ocr_text(receipt, data_dir):
    record = json.loads((data_dir / "sroie" / "train.jsonl").read_text().splitlines()[0])
    lines = run_ocr(receipt)
    text = norm(format_ocr(lines))
    assert len(lines) > 15
    assert norm(record["entities"]["date"]) in text and norm(record["entities"]["total"]) in text
    # reading order: top of the receipt first
    ys = [ln.box[1] for ln in lines]
    assert ys[0] <= min(ys) + 5 and ys[-1] >= max(ys) - 100


def test_unreadable_image_is_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="not an image|corrupt"):
        run_ocr(bad)
