"""Where extracted values came from (``vlm.extract.sources``): matching values to OCR lines on hand-made
lines, drawing the boxes, and the shipped vlm-tiny on a real SROIE receipt."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from vlm.extract.sources import PALETTE, SourceBox, annotate_pages, draw_sources, field_colours, locate
from vlm.ocr import OcrLine


def L(text, x0, y0, x1, y1, page=1):  # noqa: N802
    return OcrLine(text, (x0, y0, x1, y1), 0.99, page)


RECEIPT = [
    L("BOOK TA .K (TAMAN DAYA) SDN BHD", 10, 10, 300, 30),
    L("NO.53 55,57 & 59, JALAN SAGU 18,", 10, 35, 300, 55),
    L("TAMAN DAYA,", 10, 60, 150, 80),
    L("81100 JOHOR BAHRU, JOHOR.", 10, 85, 250, 105),
    L("DATE: 25/12/2018", 10, 110, 200, 130),
    L("NOTEBOOK", 10, 140, 120, 160), L("12.30", 250, 140, 300, 160),
    L("SUBTOTAL 12.30", 10, 170, 300, 190),
    L("TOTAL RM 12.30", 10, 200, 300, 220),
    L("CASH", 10, 230, 60, 250), L("20.00", 250, 230, 300, 250),
]


def texts(boxes):
    return [b.text for b in boxes]


def test_locate_multiline_address_total_in_a_longer_line_and_no_source():
    values = {"company": "BOOK TA .K (TAMAN DAYA) SDN BHD", "date": "25/12/2018",
              "address": "NO.53 55,57 & 59, JALAN SAGU 18, TAMAN DAYA, 81100 JOHOR BAHRU, JOHOR.",
              "total": "12.30", "phone": "03-1234 5678", "change": None}
    found = locate(RECEIPT, values)
    assert list(found) == list(values)
    assert texts(found["company"]) == ["BOOK TA .K (TAMAN DAYA) SDN BHD"]
    assert texts(found["address"]) == ["NO.53 55,57 & 59, JALAN SAGU 18,", "TAMAN DAYA,", "81100 JOHOR BAHRU, JOHOR."]
    assert texts(found["date"]) == ["DATE: 25/12/2018"]
    # 12.30 is printed three times: the row that says TOTAL wins over the item row and SUBTOTAL
    assert found["total"] == [SourceBox(1, (10, 200, 300, 220), "TOTAL RM 12.30")]
    assert found["phone"] == [] and found["change"] == []
    assert found["total"][0].to_dict() == {"page": 1, "box": [10, 200, 300, 220], "text": "TOTAL RM 12.30"}


def test_locate_ranks_whole_lines_then_reading_order_and_respects_word_boundaries():
    lines = [L("WELCOME TO ABC MART", 0, 0, 200, 20), L("ABC MART", 0, 30, 100, 50),
             L("Tel 012-345", 0, 60, 100, 80), L("ABC MART", 0, 90, 100, 110), L("12.30", 0, 120, 50, 140)]
    found = locate(lines, {"shop": "abc  mart", "amount": "2.30", "ref": "012", "cut": "MAR"})
    assert found["shop"] == [SourceBox(1, (0, 30, 100, 50), "ABC MART")]  # case and spaces ignored
    assert found["amount"] == [] and found["cut"] == []  # "2.30" inside "12.30", "MAR" inside "MART"
    assert texts(found["ref"]) == ["Tel 012-345"]  # "-" is a boundary


def test_locate_tab_split_cells_typed_values_and_pages():
    lines = [L("TOTAL", 10, 200, 60, 220), L("RM12.30", 250, 200, 300, 220),
             L("Invoice date 25 Dec 2018", 0, 0, 200, 20, page=2), L("Qty 3", 0, 30, 60, 50, page=2)]
    found = locate(lines, {"total": "TOTAL RM12.30", "amount": 12.3, "invoice_date": "2018-12-25",
                           "qty": 3, "paid": True})
    assert texts(found["total"]) == ["TOTAL", "RM12.30"]  # one row, two OCR cells
    assert texts(found["amount"]) == ["RM12.30"]  # a parsed number, matched to the printed amount
    assert [(b.page, b.text) for b in found["invoice_date"]] == [(2, "Invoice date 25 Dec 2018")]  # ISO date
    assert [(b.page, b.text) for b in found["qty"]] == [(2, "Qty 3")]
    assert found["paid"] == []


def test_locate_finds_a_corrected_misread_and_a_date_against_the_time_but_not_short_or_absent_values():
    lines = [L("SUN VICTORY SON BHD", 0, 0, 200, 20), L("99 SPEED MART 5/B (519537-X)", 0, 30, 250, 50),
             L(":19-03-201818:08:38", 0, 60, 200, 80), L("TOTAL 112.30", 0, 90, 200, 110)]
    found = locate(lines, {"company": "SUN VICTORY SDN BHD", "shop": "99 SPEED MART S/B", "date": "19-03-2018",
                           "amount": "12.30", "phone": "03-1234 5678", "other": "MOON VICTORY TRADING"})
    assert texts(found["company"]) == ["SUN VICTORY SON BHD"]  # "SON" read for "SDN", corrected by the rules
    assert texts(found["shop"]) == ["99 SPEED MART 5/B (519537-X)"]
    assert texts(found["date"]) == [":19-03-201818:08:38"]  # printed against the time, no word boundary
    assert found["amount"] == []  # under CLOSE_MIN_CHARS: "12.30" inside "112.30" is not its source
    assert found["phone"] == [] and found["other"] == []
    exact = locate([*lines, L("SUN VICTORY SDN BHD", 0, 0, 200, 20, page=2)], {"company": "SUN VICTORY SDN BHD"})
    assert [(b.page, b.text) for b in exact["company"]] == [(2, "SUN VICTORY SDN BHD")]  # as written wins


def test_draw_sources_and_annotate_pages():
    page = Image.new("RGB", (400, 300), "white")
    sources = locate(RECEIPT, {"company": "BOOK TA .K (TAMAN DAYA) SDN BHD", "total": "12.30", "date": None})
    colours = field_colours(sources)
    assert colours == {"company": PALETTE[0], "total": PALETTE[1], "date": PALETTE[2]}
    drawn = draw_sources(page, sources)
    assert drawn.size == page.size and page.getpixel((5, 210)) == (255, 255, 255)  # the input is untouched

    def rgb(hex_colour):
        return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))

    # outlines just outside the line boxes (the left edge of TOTAL RM 12.30, of the company line)
    assert drawn.getpixel((8, 210)) == rgb(PALETTE[1])
    assert drawn.getpixel((8, 20)) == rgb(PALETTE[0])
    # the total's label sits above its box, filled with its colour
    assert rgb(PALETTE[1]) in {drawn.getpixel((x, 193)) for x in range(10, 40)}

    page2 = Image.new("RGB", (200, 150), "white")
    on_two = {"total": [SourceBox(2, (10, 20, 110, 40), "TOTAL 9.00")], "company": sources["company"]}
    sheet, annotations = annotate_pages({1: page, 2: page2}, on_two, max_side=350)
    # page 2 is widened to page 1's width (x2) and put under it; the sheet is shrunk to 350 px high
    assert sheet.size == (233, 350)
    by_label = {label: box for box, label in annotations}
    assert len(annotations) == 2
    expected = {"company": (10 * 350 / 600, 10 * 350 / 600, 300 * 350 / 600, 30 * 350 / 600),
                "total": (10 * 700 / 600, 175 + 20 * 700 / 600, 110 * 700 / 600, 175 + 40 * 700 / 600)}
    for label, box in expected.items():
        assert by_label[label] == pytest.approx(box, abs=1), label
    assert sheet.getpixel((by_label["total"][0] - 2, by_label["total"][1] + 5)) != (255, 255, 255)
    with pytest.raises(ValueError):
        annotate_pages({}, on_two)


def test_extract_returns_sources_per_page_and_merged(tiny_vlm, tmp_path):
    """``sources=True`` on a two-page PDF (blank page, then text): boxes only for non-null values, on the page
    the value came from; merged and per-page agree."""
    from PIL import ImageDraw, ImageFont

    text = Image.new("RGB", (700, 260), "white")
    draw = ImageDraw.Draw(text)
    for i, line in enumerate(["ACME TRADING SDN BHD", "Date: 25/12/2018", "Total: RM 1,234.50"]):
        draw.text((30, 30 + 70 * i), line, font=ImageFont.load_default(size=40), fill="black")
    pdf = tmp_path / "two.pdf"
    Image.new("RGB", (400, 300), "white").save(pdf, "PDF", resolution=200, save_all=True, append_images=[text])
    fields = ["seller", "date", "total"]
    pages, per_page = tiny_vlm.extract(pdf, fields=fields, per_page=True, sources=True, max_new_tokens=40)
    assert [p["page"] for p in pages] == [1, 2] and len(per_page) == 2
    assert per_page[0] == dict.fromkeys(fields, [])  # the blank page
    merged, boxes = tiny_vlm.extract(pdf, fields=fields, sources=True, max_new_tokens=40)
    assert merged == pages[1]["fields"] and boxes == per_page[1]
    for name, value in merged.items():
        assert (value is None) == (boxes[name] == [])
        for b in boxes[name]:
            assert b.page == 2 and value.lower() in " ".join(x.text for x in boxes[name]).lower()


@pytest.mark.real
def test_vlm_tiny_total_box_is_on_the_total_row_of_a_real_receipt(data_dir):
    """The shipped model on a real SROIE receipt: with ``sources=True`` the total comes back with the box of
    an OCR line on the receipt's TOTAL row (a line printing the total amount there), from the OCR the
    extraction already ran (no second OCR run)."""
    from vlm import VLM
    from vlm.ocr import ocr_stats, run_ocr

    record = json.loads((data_dir / "sroie" / "train.jsonl").read_text().splitlines()[0])
    receipt = data_dir / "sroie" / record["image"]
    lines = run_ocr(receipt)
    runs = ocr_stats()["engine_runs"]
    tiny = VLM.load("vlm-tiny")
    result, boxes = tiny.extract(receipt, template="receipt", sources=True)
    assert ocr_stats()["engine_runs"] == runs  # the cached lines, not a second OCR run
    assert result["total"] == record["entities"]["total"], result
    assert set(boxes) == {"company", "date", "address", "total"}
    (total,) = boxes["total"]
    assert record["entities"]["total"] in total.text
    # the row of the total: the OCR lines level with the chosen box; one of them says TOTAL
    row = [ln for ln in lines if min(ln.box[3], total.box[3]) - max(ln.box[1], total.box[1]) > 0.5 * (
        total.box[3] - total.box[1])]
    assert any("TOTAL" in ln.text.upper() for ln in row), [ln.text for ln in row]
    assert total.box in [ln.box for ln in lines]
    for name, value in result.items():
        assert (value is None) == (boxes[name] == []), name


@pytest.mark.real
def test_a_company_the_rules_corrected_gets_the_box_of_its_misread_line(data_dir):
    """A real SROIE receipt whose name rapidocr reads "SUN VICTORY SON BHD": the receipt rules correct the
    suffix, and the value still points at the line it was read from."""
    from vlm.extract.receipt_rules import extract_fields
    from vlm.ocr import run_ocr

    record = next(r for r in map(json.loads, (data_dir / "sroie" / "train.jsonl").read_text().splitlines())
                  if r["id"] == "X51005675095")
    lines = run_ocr(data_dir / "sroie" / record["image"])
    values = extract_fields(lines)
    assert values["company"] == record["entities"]["company"] == "SUN VICTORY SDN BHD"
    assert values["company"] not in " ".join(line.text for line in lines)  # not printed as written
    (box,) = locate(lines, values)["company"]
    assert box.text.upper().startswith("SUN VICTORY S") and box.box in [line.box for line in lines]
