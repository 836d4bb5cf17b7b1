"""SROIE baselines: the OCR + rules extractor and the zero-shot LLM reply parser; real receipts end to end."""
from __future__ import annotations

import json

import pytest

from vlm.eval.baselines.rules import extract_date, extract_fields, extract_total, find_dates, ocr_rows
from vlm.eval.baselines.zero_shot import parse_fields


def _line(text, x0, y0, x1, y1):
    return {"text": text, "box": (x0, y0, x1, y1)}


def test_rows_join_cells_on_one_visual_line():
    lines = [_line("TOTAL", 10, 100, 60, 112), _line("RM 33.90", 200, 101, 260, 113), _line("CASH", 10, 130, 50, 142)]
    assert ocr_rows(lines) == ["TOTAL RM 33.90", "CASH"]
    assert ocr_rows(["A", "B"]) == ["A", "B"]  # no boxes: given order


def test_dates():
    assert find_dates("DATE: 25/12/2018 8:13:39 PM") == ["25/12/2018"]
    assert find_dates("12-01-19 21:13 SH01") == ["12-01-19"]
    assert find_dates("24 MAR 2018 18:23") == ["24 MAR 2018"]
    assert find_dates("TEL 03-3279 1851") == []
    assert find_dates("INV 99/99/9999") == []  # not a calendar date
    assert extract_date(["INVOICE 01/01/2017 REF", "DATE : 05/03/2018"]) == "05/03/2018"
    # a scan that runs the date into the time (SROIE train receipts)
    assert find_dates("Date :19-03-201818:08:38 Descri") == ["19-03-2018"]
    assert find_dates("25/01/20181:22:56PM TAX") == ["25/01/2018"]
    assert find_dates("[Sales]2018-01-0522:55:25 PosNo") == ["2018-01-05"]
    assert find_dates("REF 12/03/20185 ") == []  # digits after the year that are not a time


def test_total_prefers_rounded_and_skips_subtotals_tax_and_payment():
    rows = ["SUB-TOTAL 16.00", "TOTAL 33.92", "ROUNDING ADJUSTMENT -0.02", "TOTAL ROUNDED", "33.90",
            "CASH 50.00", "CHANGE 16.10", "TAX TOTAL: 0.91"]
    assert extract_total(rows) == "33.90"
    assert extract_total(["NETT TOTAL: RM8.20", "CASH RM8.20"]) == "RM8.20"  # attached currency kept as printed
    assert extract_total(["APPLE 1.20", "PEAR 3.40", "CASH 10.00", "CHANGE 5.40"]) == "3.40"  # no keyword
    # the total incl. GST, then the same sum rounded to 5 sen on a row below: the rounded one was paid
    assert extract_total(["Total RM Incl. of GST 49.39", "Total RM 49.40", "CASH 50.00"]) == "49.40"
    assert extract_total(["Total Sales (Inclusive GST) RM 45.34", "Rounding RM 45.35", "CREDIT RM 45.35"]) == "45.35"
    assert extract_total(["TOTAL 49.39", "CASH 50.00", "CHANGE 0.61"]) == "49.39"  # nothing rounded printed
    assert extract_total(["TOTAL 49.39", "GST SUMMARY", "49.40"]) == "49.39"  # not from the tax table


def test_company_and_address_from_a_receipt_header():
    rows = ["YONGFATT ENTERPRISE", "(JM0517726)", "NO 122.124 JALAN DEDAP 13", "81100 JOHOR BAHRU",
            "TEL 07-3523888", "GST ID: 000849813504", "DATE 25/12/2018", "TOTAL: 80.90"]
    out = extract_fields(rows)
    assert out == {"company": "YONGFATT ENTERPRISE", "date": "25/12/2018",
                   "address": "NO 122.124 JALAN DEDAP 13 81100 JOHOR BAHRU", "total": "80.90"}
    rows = ["Aik Huat Hardware", "Enterprise (Setia", "Alam) Sdn Bhd", "822737-X", "No. 17-G, Jalan Setia Indah",
            "Tel: 012-6651783"]
    out = extract_fields(rows)
    assert out["company"] == "AIK HUAT HARDWARE ENTERPRISE (SETIA ALAM) SDN BHD"
    assert out["address"] == "NO. 17-G, JALAN SETIA INDAH"
    # the recogniser's 5/S and O/D slips in a legal suffix are put right; other words are left alone
    assert extract_fields(["99 SPEED MART 5/B (519537-X)", "LOT P.T. 2811, JALAN ANGSA,"])["company"] == "99 SPEED MART S/B"
    assert extract_fields(["SUN VICTORY SON BHD", "(No.193573-M)"])["company"] == "SUN VICTORY SDN BHD"
    assert extract_fields(["MASON BHD", "(No.193573-M)"])["company"] == "MASON BHD"


def test_zero_shot_reply_parsing():
    reply = 'Sure! {"company": "ABC SDN BHD", "date": "01/02/2018", "total": 9.5} hope this helps'
    assert parse_fields(reply) == {"company": "ABC SDN BHD", "date": "01/02/2018", "address": None, "total": "9.5"}
    broken = '{"company": "ABC", "address": "1 JALAN X",\n "total": 2.36, "tax": "'  # cut off: loose pairs read
    assert parse_fields(broken) == {"company": "ABC", "date": None, "address": "1 JALAN X", "total": "2.36"}
    assert parse_fields("I cannot read this receipt.") == dict.fromkeys(["company", "date", "address", "total"])


@pytest.mark.real
def test_rules_baseline_on_real_receipts_with_our_ocr(data_dir, tmp_path, tiny_vlm):
    """Image -> vlm.ocr (rapidocr) -> rules, on the first receipts of the SROIE train split (whose OCR files
    and keys the system never reads); the model path (VLM.extract) runs beside it with a tiny random model."""
    from vlm.cli import main

    src = data_dir / "sroie" / "train.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines()[:3]]
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"id": r["id"], "image": str(data_dir / "sroie" / r["image"]),
                                        "entities": r["entities"]}) + "\n" for r in rows))
    out = tmp_path / "out"
    model = tiny_vlm.save(tmp_path / "tiny")
    assert main(["eval", "sroie", "--data", str(data), "--systems", "rules,model", "--model", str(model),
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["systems"]["model"]["examples"] == 3
    assert 0 <= report["systems"]["model"]["overall"]["f1"] <= 1
    rules = report["systems"]["rules"]
    assert rules["fields"]["date"]["f1"] == 1.0
    assert rules["fields"]["total"]["f1"] >= 2 / 3
    assert rules["overall"]["f1"] >= 0.5
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    preds = [p for p in preds if p["system"] == "rules"]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    assert all(p["reference"] == r["entities"] for p, r in zip(preds, rows))
