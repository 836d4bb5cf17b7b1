"""Fields decoded as a choice among whole OCR rows / runs of rows (``vlm.extract.layout``) and a template's
rule-based reader as evidence (``Template.reader``), on real SROIE train receipts with real OCR, and the
shipped vlm-tiny where decoding is involved."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vlm.extract import receipt_rules
from vlm.extract.constrained import JsonObjectMachine
from vlm.extract.extract import _evidence, _machine
from vlm.extract.layout import LineChoice, line_candidates, ocr_rows, strip_registration
from vlm.extract.prompts import TEMPLATES, format_ocr, get_template
from vlm.extract.schema import resolve_schema
from vlm.ocr import OcrLine, run_ocr

AEON = "X51005447860"  # company printed with its registration number; a three-row address


@pytest.fixture(scope="module")
def aeon(data_dir):
    rec = next(json.loads(line) for line in (data_dir / "sroie" / "train.jsonl").read_text().splitlines()
               if json.loads(line)["id"] == AEON)
    image = data_dir / "sroie" / rec["image"]
    return image, run_ocr(image), rec["entities"]


@pytest.fixture(scope="module")
def tiny():
    from vlm import VLM

    return VLM.load("vlm-tiny")


def test_rows_and_candidates_of_a_real_receipt(aeon):
    _, lines, key = aeon
    rows = ocr_rows(lines)
    assert rows[0] == "AEON CO. (M) BHD (126926-H)"
    company = line_candidates(rows, LineChoice(top=8, max_rows=2, strip_ids=True))
    assert key["company"] in company and rows[0] in company  # cut and uncut
    assert key["company"] not in line_candidates(rows, LineChoice(top=8, max_rows=2))
    address = line_candidates(rows, LineChoice(top=8, max_rows=4))
    assert key["address"] in address
    # whole rows only: no half row, no run longer than max_rows, none starting below top
    assert "3RD FLR, AEON TAMAN MALURI SC JLN JEJAKA" not in address
    assert " ".join(rows[1:6]) not in address
    assert rows[9] not in line_candidates(rows, LineChoice(top=8, max_rows=1))
    # max_length drops long runs
    assert all(len(c) <= 30 for c in line_candidates(rows, LineChoice(top=8, max_rows=4), max_length=30))


def test_strip_registration_and_rules_share_layout():
    assert strip_registration("MR D.I.Y. (M) SDN BHD (CO.REG : 860671-D)") == "MR D.I.Y. (M) SDN BHD"
    assert strip_registration("SYL ROASTED DELIGHTS SDN. BHD. 122703") == "SYL ROASTED DELIGHTS SDN. BHD."
    assert strip_registration("AEON CO. (M) BHD") == "AEON CO. (M) BHD"
    from vlm.eval.baselines import rules

    assert rules.ocr_rows is ocr_rows and rules.extract_fields is receipt_rules.extract_fields
    lines = [OcrLine("TOTAL", (0, 0, 50, 10), 1.0), OcrLine("RM 33.90", (100, 1, 160, 11), 1.0),
             OcrLine("CASH", (0, 20, 40, 30), 1.0)]
    assert ocr_rows(lines) == ["TOTAL RM 33.90", "CASH"]
    with pytest.raises(ValueError):
        LineChoice(top=0)


def test_a_total_keeps_its_currency_only_when_written_against_the_number():
    assert receipt_rules.labelled_total(["TOTAL RM9.00", "CASH 10.00"]) == "RM9.00"
    assert receipt_rules.labelled_total(["TOTAL RM 9.00"]) == "9.00"
    assert receipt_rules.labelled_total(["TOTAL RM\t9.00"]) == "9.00"  # a tab sets it apart like a space
    assert receipt_rules.labelled_total(["GRAND TOTAL $1,234.50"]) == "$1,234.50"


def test_line_fields_decode_to_whole_rows_only(aeon):
    _, lines, _ = aeon
    t = replace(get_template("receipt"), lines={"company": LineChoice(8, 2, True), "address": LineChoice(8, 4)})
    doc = resolve_schema(template=t)
    assert doc.fields[0].lines == LineChoice(8, 2, True) and doc.fields[1].lines is None
    m = _machine(doc, format_ocr(lines), lines)
    head = '{"company": "'
    # a grounded free value could stop after "AEON CO."; a line choice cannot
    assert m.feed(m.start(), head + 'AEON CO."') is None
    assert m.feed(m.start(), head + 'AEON CO. (M) BHD", "date": ') is not None
    assert m.feed(m.start(), head + 'AEON CO. (M) BHD (126926-H)", "date": ') is not None
    state = m.feed(m.start(), head + 'AEON CO. (M) BHD", "date": "19/02/2018", "address": "3RD FLR, AEON TAMAN '
                   'MALURI SC JLN JEJAKA, TAMAN MALURI"')
    assert state is not None
    assert m.feed(m.start(), head + 'AEON CO. (M) BHD", "date": "19/02/2018", "address": "3RD FLR, AEON"') is None
    # no boxes (no lines) or no grounding: free text as before
    free = _machine(doc, format_ocr(lines), None)
    assert free.feed(free.start(), head + 'AEON CO."') is not None


def test_templates_without_lines_or_reader_are_unchanged(aeon):
    _, lines, _ = aeon
    for name in ("invoice", "form"):
        doc = resolve_schema(template=name)
        assert all(f.lines is None for f in doc.fields) and doc.reader is None and _evidence(doc, lines) == {}
    assert resolve_schema(template="kv").freeform and resolve_schema(fields=["company"]).fields[0].lines is None
    assert _evidence(resolve_schema(template="kv"), lines) == {}


def test_reader_evidence_is_forced_for_reader_fields(aeon):
    _, lines, _ = aeon
    t = replace(get_template("receipt"), lines={}, reader=receipt_rules.extract_fields, reader_fields=("company",))
    doc = resolve_schema(template=t)
    ev = _evidence(doc, lines)
    assert ev["company"] == "AEON CO. (M) BHD" and set(ev) <= set(doc.names)
    m = _machine(doc, format_ocr(lines), lines, ev)
    assert m.feed(m.start(), '{"company": "AEON CO. (M) BHD", "date": ') is not None
    assert m.feed(m.start(), '{"company": "AEON CO. (M) BHD (126926-H)"') is None
    assert m.feed(m.start(), '{"company": null, "date": ') is not None  # null stays possible (then filled)


def test_receipt_template_on_a_real_receipt_with_the_shipped_model(tiny, aeon):
    image, lines, key = aeon
    t = get_template("receipt")
    out, boxes = tiny.extract(image, template=t, sources=True)
    rows = ocr_rows(lines)
    for name in ("company", "address"):
        rule = t.lines.get(name)
        if out[name] is None:
            continue
        allowed = set(line_candidates(rows, rule)) if rule else set()
        ev = receipt_rules.extract_fields(lines).get(name)
        assert out[name] in allowed | {ev}, (name, out[name])
        assert boxes[name]  # a whole-row value maps back to its OCR lines
    assert out["date"] == key["date"]


def test_reader_fills_what_the_model_leaves_null(tiny, aeon):
    image, lines, _ = aeon
    # no candidate on the page (a pattern nothing matches): the model can only write null, the reader answers
    t = replace(TEMPLATES["receipt"], fields=("company", "total"), patterns={"company": r"ZQZQ\d{9}"}, lines={},
                reader=lambda ls: {"company": "AEON CO. (M) BHD", "other": "x"}, reader_fields=())
    assert tiny.extract(image, template=t)["company"] == "AEON CO. (M) BHD"
    assert tiny.extract(image, template=replace(t, reader=None))["company"] is None
    # a reader field: the model writes the reader's value
    forced = replace(t, patterns={}, lines={"company": LineChoice(top=3, max_rows=1)}, reader_fields=("company",))
    assert tiny.extract(image, template=forced)["company"] == "AEON CO. (M) BHD"


def test_receipt_evidence_leaves_an_address_without_postcode_to_the_model(data_dir, aeon):
    _, lines, key = aeon
    ev = receipt_rules.evidence(lines)
    assert ev == receipt_rules.extract_fields(lines) and ev["address"] == key["address"]  # postcode 55100: kept
    # a train receipt where the rules take a registration-number row for the address: no postcode, no evidence
    other = run_ocr(data_dir / "sroie" / "images" / "X51005447861.jpg")
    assert receipt_rules.extract_fields(other)["address"] == "(CO. NO. 113825-W)"
    assert receipt_rules.evidence(other)["address"] is None
    assert TEMPLATES["receipt"].reader is receipt_rules.evidence


def test_choices_the_tokenizer_cannot_write_are_dropped(tiny, aeon):
    """SmolLM2's byte-level vocabulary has no token of its own for "À": a choice holding it could dead-end
    the decoder (found on a SROIE val receipt), so line and evidence choices with such characters are dropped."""
    from vlm.extract.extract import _writable

    _, lines, _ = aeon
    writable = _writable(tiny)
    assert "A" in writable and '"' in writable and "\\" in writable and "À" not in writable
    t = replace(get_template("receipt"), reader=lambda ls: {"company": "CAFÉ À LA CARTE"}, reader_fields=("company",))
    doc = resolve_schema(template=t)
    ev = _evidence(doc, lines)
    m = _machine(doc, format_ocr(lines), lines, ev, writable)
    assert m.feed(m.start(), '{"company": "CAF') is None  # not forced: the line choices instead
    assert m.feed(m.start(), '{"company": "AEON CO. (M) BHD", "date": ') is not None
    no_j = frozenset(writable - {"J"})  # as if "J" could not be written: runs through "JLN JEJAKA" go
    m = _machine(doc, format_ocr(lines), lines, {}, no_j)
    head = '{"company": "AEON CO. (M) BHD", "date": "19/02/2018", "address": "3RD FLR, AEON TAMAN MALURI SC'
    assert m.feed(m.start(), head + '", "total": ') is not None
    assert m.feed(m.start(), head + ' J') is None
    m = _machine(doc, format_ocr(lines), lines, {}, writable)
    assert m.feed(m.start(), head + ' JLN JEJAKA, TAMAN MALURI", "total": ') is not None


def test_the_model_does_not_run_where_the_rules_decide_every_field(tiny, aeon, data_dir, monkeypatch):
    """A reader field comes back as the reader's value whatever the model writes (its value or null, then
    filled), so where the receipt rules decide all four fields the model is skipped, with the same result."""
    import vlm.extract.extract as ex

    image, lines, _ = aeon
    doc = resolve_schema(template="receipt")
    ev = receipt_rules.evidence(lines)
    assert all(ev.values()) and ex.reader_decided(tiny, doc, lines) == ev
    with monkeypatch.context() as m:  # the model decides: the shortcut off
        m.setattr(ex, "_reader_decides", lambda *a: None)
        by_model = tiny.extract(image, template="receipt")

    def no_model(*a, **kw):
        raise AssertionError("the model ran on a receipt the rules decide")

    monkeypatch.setattr(tiny, "generate", no_model)
    assert tiny.extract(image, template="receipt") == by_model
    # the rules find no address with a postcode on this one: the model has a field to decide
    other = run_ocr(data_dir / "sroie" / "images" / "X51005447861.jpg")
    assert ex.reader_decided(tiny, doc, other) is None
    with pytest.raises(AssertionError, match="the model ran"):
        tiny.extract(data_dir / "sroie" / "images" / "X51005447861.jpg", template="receipt")
    # a schema field outside the reader's (or a reader value the tokenizer cannot write) leaves it to the model
    assert ex.reader_decided(tiny, resolve_schema(fields=["company", "date", "phone"]), lines) is None
    t = replace(get_template("receipt"), reader=lambda ls: {**ev, "company": "CAFÉ À LA CARTE"})
    assert ex.reader_decided(tiny, resolve_schema(template=t), lines) is None
