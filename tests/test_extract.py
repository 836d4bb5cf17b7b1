"""Document extraction: constrained decoding, grounding, schemas and typing rules, pipeline, CLI, bad input."""
from __future__ import annotations

import json
import random
from typing import Optional

import pytest
from PIL import Image, ImageDraw, ImageFont

from vlm.documents import DocumentError
from vlm.extract import fields_answer, fields_prompt, format_ocr
from vlm.extract.constrained import JsonLogitsProcessor, JsonObjectMachine, ValueRule, token_texts
from vlm.extract.prompts import TEMPLATES, get_template
from vlm.extract.schema import ExtractionError, SchemaError, coerce, parse_date, parse_number, resolve_schema
from vlm.ocr import ocr_stats, run_ocr

FIELDS = ["company", "date", "address", "total"]


def norm(s: str) -> str:
    return " ".join(s.split()).lower()


def grounded(values: dict, corpus: str) -> bool:
    return all(v is None or (isinstance(v, str) and v and norm(v) in norm(corpus)) for v in values.values())


# -- the state machine -------------------------------------------------------------------------------
def random_walk(machine: JsonObjectMachine, alphabet: str, rng: random.Random, steps: int = 400) -> str:
    """Feed random allowed characters; the machine must never dead-end before it is done."""
    state, text = machine.start(), ""
    for _ in range(steps):
        if machine.is_done(state):
            break
        options = [ch for ch in alphabet if machine.step(state, ch) is not None]
        assert options, f"dead end after {text!r}"
        ch = rng.choice(options)
        state, text = machine.step(state, ch), text + ch
    return text


def test_machine_writes_only_schema_valid_grounded_json():
    corpus = 'BOOK TA _K (TAMAN DAYA) SDN BHD\nDate:\t25/12/2018\nTotal :\t9.00\nsays "hi" \\ ok'
    rules = [ValueRule(), ValueRule(max_length=6), ValueRule(choices=("paid", "unpaid"))]
    machine = JsonObjectMachine(["company", "date", "status"], rules, corpus=corpus)
    alphabet = sorted(set(corpus + '{}":, null\\/' + "paidun" + "companydtesu") - {"\n", "\t"})
    rng = random.Random(0)
    for _ in range(60):
        text = random_walk(machine, alphabet, rng)
        state = machine.feed(machine.start(), text)
        if machine.is_done(state):
            obj = json.loads(text)
            assert list(obj) == ["company", "date", "status"]
            assert text == fields_answer(obj)  # canonical form, as trained
            assert grounded({k: obj[k] for k in ("company", "date")}, corpus)
            assert obj["date"] is None or len(obj["date"]) <= 6
            assert obj["status"] in (None, "paid", "unpaid")
            assert machine.values(state) == obj


def test_machine_rejects_invented_values_and_completes_to_null():
    m = JsonObjectMachine(["company", "total"], corpus="TOTAL 9.00")
    assert m.feed(m.start(), '{"company": "ACME') is None  # not in the OCR text
    assert m.feed(m.start(), '{"company": " 9') is None  # leading space
    assert m.feed(m.start(), '{"company": "9.00 ') is None  # trailing space can never be continued
    assert m.feed(m.start(), '{"company":"9') is None  # only the canonical spacing
    ok = m.feed(m.start(), '{"company": "total 9.00", "total": "9.0')
    assert m.values(ok) == {"company": "total 9.00", "total": None}  # unfinished value -> null
    no_text = JsonObjectMachine(["company"], corpus="")
    assert no_text.feed(no_text.start(), '{"company": "') is None
    assert no_text.values(no_text.feed(no_text.start(), '{"company": null}')) == {"company": None}


def test_grounded_values_never_cut_a_word_or_a_number():
    m = JsonObjectMachine(["address", "total"], corpus="109, SS21/1A, DAMANSARA UTAMA\nTOTAL\tRM12.00")
    start = m.feed(m.start(), '{"address": "')
    assert m.feed(start, 'DAMANSA"') is None  # ends inside a word
    assert m.feed(start, "AMANSARA") is None  # starts inside a word
    assert m.feed(start, 'UTAMA TOTAL RM1') is not None  # runs across rows; may still grow to "RM12.00"
    assert m.feed(start, 'UTAMA TOTAL RM1"') is None  # ends inside a number
    done = m.feed(start, 'damansara utama", "total": "12.00"}')  # case-insensitive; letters|digits is a cut
    assert m.values(done) == {"address": "damansara utama", "total": "12.00"}
    assert m.feed(start, '109, SS21/1A"') is not None
    capped = JsonObjectMachine(["a"], [ValueRule(max_length=4)], corpus="DAMANSARA")
    assert capped.is_done(capped.feed(capped.start(), '{"a": "DAMA"}'))  # the length cap may cut: no dead end


def test_freeform_machine():
    m = JsonObjectMachine(None, corpus="Name: John Smith\nPhone: 555 0101")
    state = m.feed(m.start(), '{"Name": "John Smith", "Phone": "555 0101", "Fax": null}')
    assert m.is_done(state) and m.values(state) == {"Name": "John Smith", "Phone": "555 0101", "Fax": None}
    assert m.is_done(m.feed(m.start(), "{}"))
    assert m.feed(m.start(), '{"Name": "Jane"') is None
    rng = random.Random(1)
    for _ in range(20):
        text = random_walk(m, sorted(set('{}":, nul' + "namejohsmitp5 01")), rng)
        state = m.feed(m.start(), text)
        if m.is_done(state):
            assert isinstance(json.loads(text), dict)


def test_processor_masks_to_allowed_tokens(tiny_vlm):
    import torch

    tok = tiny_vlm.processor.tokenizer
    texts = token_texts(tok)
    m = JsonObjectMachine(["total"], corpus="TOTAL 9.00")
    proc = JsonLogitsProcessor(m, texts, [tok.eos_token_id], prompt_length=0)
    scores = torch.zeros(1, len(tok))
    out = proc(torch.zeros(1, 0, dtype=torch.long), scores)
    allowed = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert allowed and all(texts.texts[t] and '{"total": '.startswith(texts.texts[t][:10]) for t in allowed)
    assert proc.full_scans == 1  # uniform scores: top-k held nothing useful, the trie walk found them


def test_forced_text_is_what_every_continuation_starts_with():
    """What jump-forward decoding may feed unasked: literals, null where nothing else fits, the shared part of a
    value's choices; never a point where the value may end or go on, free text or an escape."""
    rules = [ValueRule(choices=("SHOP A SDN BHD", "SHOP A SDN BHD (HQ)", "SHOP B")), ValueRule(choices=()),
             ValueRule(choices=('SAY "HI"',)), ValueRule()]
    m = JsonObjectMachine(["company", "none", "quote", "free"], rules)
    assert m.forced(m.start()) == '{"company": '
    state = m.feed(m.start(), '{"company": "S')
    assert m.forced(state) == "HOP "  # A or B next
    state = m.feed(state, "HOP A")
    assert m.forced(state) == " SDN BHD"  # then it may close or go on with " (HQ)"
    closed = m.feed(state, ' SDN BHD"')
    assert m.forced(closed) == ', "none": null, "quote": '  # no choice for "none": only null
    inside = m.feed(closed, ', "none": null, "quote": "')
    assert m.forced(inside) == "SAY "  # the quote inside the value is written escaped: not forced
    assert m.forced(m.feed(inside, 'SAY \\"HI\\"')) == '", "free": '
    assert m.forced(m.feed(inside, 'SAY \\"HI\\"", "free": "x')) == ""
    done = m.feed(inside, 'SAY \\"HI\\"", "free": null}')
    assert m.is_done(done) and m.forced(done) == ""
    for text in (m.forced(m.start()), "HOP "):  # forced text is always accepted
        assert m.feed(m.start() if text.startswith("{") else m.feed(m.start(), '{"company": "S'), text) is not None


def test_processor_drafts_forced_tokens(tiny_vlm):
    import torch

    tok = tiny_vlm.processor.tokenizer
    texts = token_texts(tok)
    m = JsonObjectMachine(["total"], [ValueRule(choices=("12.50",))])
    proc = JsonLogitsProcessor(m, texts, [tok.eos_token_id], prompt_length=0,
                               encode=lambda text: tok.encode(text, add_special_tokens=False))
    empty = torch.zeros(1, 0, dtype=torch.long)
    proc(empty, torch.zeros(1, len(tok)))
    draft = proc.draft(empty)
    assert tok.decode(draft) == '{"total": '
    ids = torch.tensor([draft + tok.encode('"', add_special_tokens=False)])
    proc(ids, torch.zeros(1, len(tok)))
    assert tok.decode(proc.draft(ids)) == '12.50"}'
    end = torch.tensor([ids[0].tolist() + proc.draft(ids)])
    assert proc.draft(end) == [tok.eos_token_id]  # the object is closed: only the end may follow
    assert proc.draft(torch.zeros(2, 0, dtype=torch.long)) == []  # one row only
    assert "".join(texts.texts[t] for t in texts.longest_match("SDN BHD")) == "SDN BHD"


# -- structured answers (typed, ungrounded: OpenAI's response_format) -----------------------------------
TYPED = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8}, "count": {"type": "integer"}, "price": {"type": ["number", "null"]},
    "ok": {"type": "boolean"}, "colour": {"enum": ["red", "blue"]}, "note": {"type": "string", "maxLength": 5}},
    "required": ["name", "count", "price", "ok", "colour"], "additionalProperties": False}


def test_typed_machine_writes_only_json_that_fits_the_schema():
    from jsonschema import validate

    from vlm.extract.structured import answer_machine, parse_answer

    machine = answer_machine(TYPED)
    alphabet = sorted(set('{}":, nul-.0123456789truefalsredbluxyz\\') | set("namecoutpriklsf"))
    rng = random.Random(0)
    done = 0
    for _ in range(200):
        text = random_walk(machine, alphabet, rng, steps=600)
        state = machine.feed(machine.start(), text)
        if machine.is_done(state):
            done += 1
            obj = parse_answer(text, TYPED)
            validate(obj, TYPED)
            assert list(obj) == list(TYPED["properties"])
            assert machine.values(state) == obj
            assert obj["name"] is not None and isinstance(obj["count"], int) and isinstance(obj["ok"], bool)
    assert done >= 100
    for bad in ('{"name": null', '{"name": "a", "count": 1.5', '{"name": "a", "count": 01',
                '{"name": "a", "count": 1, "price": 1.', '{"name": "a", "count": 1, "price": 1e5',
                '{"name": "a", "count": 1, "price": null, "ok": "true"', '{"name": "123456789"'):
        assert machine.feed(machine.start(), bad + "}") is None, bad
    free = answer_machine(None)  # json_object: any flat object of strings, numbers, booleans and nulls
    text = '{"a": 1, "b": -2.5, "c": true, "d": null, "e": "x"}'
    assert free.is_done(free.feed(free.start(), text)) and free.values(free.feed(free.start(), text))["b"] == -2.5


@pytest.mark.parametrize("prop, words", [
    ({"type": "string", "pattern": "^a"}, "'pattern'"), ({"type": "string", "format": "date"}, "'format'"),
    ({"type": "integer", "minimum": 3}, "'minimum'"), ({"type": "string", "minLength": 2}, "'minLength'"),
    ({"type": "array", "items": {"type": "string"}}, "array"), ({"type": "object"}, "object"),
])
def test_answer_machine_refuses_what_it_cannot_enforce(prop, words):
    from vlm.extract.structured import answer_machine

    with pytest.raises(SchemaError, match=words):
        answer_machine({"type": "object", "properties": {"x": prop}})
    with pytest.raises(SchemaError, match="'y'"):
        answer_machine({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["y"]})
    with pytest.raises(SchemaError, match="minProperties"):
        answer_machine({"type": "object", "properties": {"x": {"type": "string"}}, "minProperties": 1})


def test_random_model_answers_fit_the_schema(tiny_vlm):
    """Any model, greedy or sampled, writes JSON that satisfies the schema when it stops by itself."""
    from vlm import generation
    from vlm.config import GenerationOptions
    from vlm.extract.structured import answer_machine, parse_answer

    conversation = [{"role": "user", "content": "Describe an item as JSON."}]
    for i, opts in enumerate([GenerationOptions(max_new_tokens=80), GenerationOptions(max_new_tokens=80,
                                                                                      temperature=1.0, seed=3)]):
        prepared = tiny_vlm.prepare([conversation], opts, answer_format=answer_machine(TYPED))
        tally = generation.Tally()
        (text,) = tiny_vlm.generate(prepared, tally=tally)
        new = tally.row()
        assert new[-1] in prepared.eos_token_ids, (i, text)  # it closed the object by itself within 80 tokens
        parse_answer(text, TYPED)


# -- prompts -----------------------------------------------------------------------------------------
def test_prompt_format_and_templates():
    p = fields_prompt(FIELDS, "ACME\nTOTAL\t9.00")
    assert p.startswith("OCR text:\nACME\nTOTAL\t9.00\n") and "company, date, address, total." in p
    assert "null" in p and "(no text found)" in fields_prompt(FIELDS, "")
    assert fields_answer({"total": "9.00", "company": None}, FIELDS) == (
        '{"company": null, "date": null, "address": null, "total": "9.00"}')
    assert fields_answer({"company": "ÉCOLE"}) == '{"company": "ÉCOLE"}'
    assert TEMPLATES["receipt"].prompt("x") == fields_prompt(FIELDS, "x")  # identical to the trained prompt
    assert "- invoice_number:" in TEMPLATES["invoice"].prompt("x")
    assert "every key-value pair" in TEMPLATES["kv"].prompt("x")
    assert {"receipt", "invoice", "form", "kv"} <= set(TEMPLATES)
    with pytest.raises(ValueError, match="unknown template"):
        get_template("passport")


# -- schemas and typing ------------------------------------------------------------------------------
def test_schema_sources_and_bad_schemas(tmp_path):
    from pydantic import BaseModel

    class Receipt(BaseModel):
        company: Optional[str] = None
        total: Optional[float] = None

    assert resolve_schema(fields="a, b").names == ["a", "b"]
    assert [f.kind for f in resolve_schema(schema=Receipt).fields] == ["string", "number"]
    js = {"type": "object", "properties": {"when": {"type": ["string", "null"], "format": "date"},
                                           "paid": {"type": "boolean"}, "n": {"type": "integer"},
                                           "kind": {"enum": ["cash", "card"]}}}
    doc = resolve_schema(schema=js)
    assert [(f.kind, f.format) for f in doc.fields] == [("string", "date"), ("boolean", None),
                                                        ("integer", None), ("string", None)]
    assert doc.fields[1].choices == ("true", "false") and doc.fields[3].choices == ("cash", "card")
    path = tmp_path / "s.json"
    path.write_text(json.dumps(js))
    assert resolve_schema(schema=str(path)).names == ["when", "paid", "n", "kind"]
    with pytest.raises(SchemaError, match="empty"):
        resolve_schema(fields=[])
    with pytest.raises(SchemaError, match="not a valid JSON Schema"):
        resolve_schema(schema={"type": "object", "properties": {"a": {"type": "strang"}}})
    with pytest.raises(SchemaError, match="nested objects"):
        resolve_schema(schema={"type": "object", "properties": {"a": {"type": "array"}}})
    with pytest.raises(SchemaError, match="no properties"):
        resolve_schema(schema={"type": "object"})
    with pytest.raises(SchemaError, match="only one of"):
        resolve_schema(fields=["a"], template="receipt")
    path.write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        resolve_schema(schema=str(path))


def test_typing_rules():
    assert parse_date("25/12/2018 8:13:39 PM") == "2018-12-25"
    assert parse_date("12-01-19") == "2019-01-12"  # day first
    assert parse_date("03/25/2018") == "2018-03-25"  # month first only when day first is impossible
    assert parse_date("2018-12-25") == "2018-12-25" and parse_date("25 Dec 2018") == "2018-12-25"
    assert parse_date("Dec 25, 2018") == "2018-12-25" and parse_date("TOTAL") is None
    assert parse_number("RM 1,234.50") == 1234.5 and parse_number("9.00") == 9.0
    assert parse_number("1.234,50") == 1234.5 and parse_number("12,5") == 12.5
    assert parse_number("7", integer=True) == 7 and parse_number("7.5", integer=True) is None
    assert parse_number("n/a") is None


def test_receipt_template_upper_cases_its_text_fields():
    """Grounding ignores case, so a value copied from mixed-case OCR may come out mixed ("PLaza"); the receipt
    template returns company and address upper-cased, as SROIE labels them. Other sources keep the case."""
    receipt = {f.name: f for f in resolve_schema(template="receipt").fields}
    assert [n for n, f in receipt.items() if f.upper] == ["company", "address"]
    assert coerce(receipt["address"], "LOT 6, JALAN BATAI,  PLaza BATAI") == "LOT 6, JALAN BATAI, PLAZA BATAI"
    assert coerce(receipt["total"], "RM9.00") == "RM9.00" and coerce(receipt["company"], None) is None
    plain = resolve_schema(fields=FIELDS).fields[0]
    assert coerce(plain, "Plaza Batai") == "Plaza Batai"
    assert not any(f.upper for f in resolve_schema(template="invoice").fields)


# -- the pipeline ------------------------------------------------------------------------------------
def text_image(lines: list[str], size=(640, 300)) -> Image.Image:
    font = ImageFont.load_default(size=26)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        d.text((30, 30 + 50 * i), line, font=font, fill="black")
    return img


@pytest.fixture(scope="module")
def invoice_image() -> Image.Image:
    return text_image(["ACME TRADING SDN BHD", "Invoice No: INV-2041", "Date: 25/12/2018", "Total: RM 1,234.50"])


def test_random_model_always_yields_schema_valid_grounded_json(tiny_vlm, receipt):
    ocr_text = format_ocr(run_ocr(receipt))
    for kw in ({"max_new_tokens": 60}, {"max_new_tokens": 40, "temperature": 1.0, "seed": 1}):
        out = tiny_vlm.extract(receipt, fields=FIELDS, **kw)  # greedy, then sampled
        assert list(out) == FIELDS and grounded(out, ocr_text)
    free = tiny_vlm.extract(receipt, template="kv", max_new_tokens=40)
    assert isinstance(free, dict) and grounded(free, ocr_text)


def test_schema_types_and_pydantic(tiny_vlm, invoice_image):
    from pydantic import BaseModel

    class Invoice(BaseModel):
        seller: Optional[str] = None
        total: Optional[float] = None
        when: Optional[str] = None

    out = tiny_vlm.extract(invoice_image, schema=Invoice, max_new_tokens=60)
    assert isinstance(out, Invoice)
    assert out.total is None or isinstance(out.total, float)
    js = {"type": "object", "required": ["date", "paid"],
          "properties": {"date": {"type": "string", "format": "date"}, "paid": {"type": "boolean"},
                         "count": {"type": "integer"}}}
    out = tiny_vlm.extract(invoice_image, schema=js, max_new_tokens=60)
    assert set(out) == {"date", "paid", "count"}
    assert out["date"] is None or parse_date(out["date"]) == out["date"]
    assert out["paid"] in (None, True, False) and (out["count"] is None or isinstance(out["count"], int))

    class Strict(BaseModel):
        total: float

    with pytest.raises(ExtractionError, match="not found in the document.*total"):
        tiny_vlm.extract(Image.new("RGB", (200, 100), "white"), schema=Strict)


def test_no_text_gives_nulls_and_cache_skips_ocr(tiny_vlm):
    blank = Image.new("RGB", (300, 200), "white")
    assert tiny_vlm.extract(blank, fields=FIELDS) == dict.fromkeys(FIELDS)
    assert tiny_vlm.extract(blank, template="kv") == {}
    runs = ocr_stats()["engine_runs"]
    assert tiny_vlm.extract(blank, template="invoice") == dict.fromkeys(TEMPLATES["invoice"].fields)
    assert ocr_stats()["engine_runs"] == runs  # second time: OCR came from the cache


def test_multipage_pdf_merge_and_per_page(tiny_vlm, invoice_image, tmp_path):
    pdf = tmp_path / "two.pdf"
    Image.new("RGB", (400, 300), "white").save(pdf, "PDF", resolution=200, save_all=True,
                                                append_images=[invoice_image])
    pages = tiny_vlm.extract(pdf, fields=["seller", "total"], per_page=True, max_new_tokens=30)
    assert [p["page"] for p in pages] == [1, 2]
    assert pages[0]["fields"] == {"seller": None, "total": None}  # the blank page
    merged = tiny_vlm.extract(pdf, fields=["seller", "total"], max_new_tokens=30)
    assert merged == pages[1]["fields"]  # first non-null per field
    only2 = tiny_vlm.extract(pdf, fields=["seller", "total"], pages="2", max_new_tokens=30)
    assert only2 == merged


def test_bad_inputs_have_clear_errors(tiny_vlm, tmp_path):
    from test_documents import empty_pdf, encrypted_pdf

    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"no image here")
    with pytest.raises(DocumentError, match="not an image or PDF"):
        tiny_vlm.extract(junk, fields=FIELDS)
    for name, data, message in [("e.pdf", encrypted_pdf(), "encrypted"), ("z.pdf", empty_pdf(), "no pages")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DocumentError, match=message):
            tiny_vlm.extract(tmp_path / name, fields=FIELDS)
    with pytest.raises(SchemaError, match="empty"):
        tiny_vlm.extract(junk, fields=[])
    with pytest.raises(SchemaError, match="not a valid JSON Schema"):
        tiny_vlm.extract(junk, schema={"type": "object", "properties": {"a": {"type": 5}}})


def test_cli_extract_and_ocr(tiny_vlm, receipt, tmp_path, capsys):
    from vlm.cli import main

    model_dir = tiny_vlm.save(tmp_path / "model")
    assert main(["extract", str(receipt), "--fields", "company,date,address,total", "--model", str(model_dir),
                 "--max-new-tokens", "60"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == FIELDS
    assert main(["extract", str(receipt), "--fields", "company,date,address,total", "--model", str(model_dir),
                 "--max-new-tokens", "60", "--sources"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["fields"] == out and list(both["sources"]) == FIELDS  # the same answer (greedy), and its sources
    for field, found in both["sources"].items():
        for box in found:  # each an OCR line of the receipt
            assert set(box) == {"page", "box", "text"} and box["page"] == 1 and len(box["box"]) == 4
        if out[field] is None:
            assert found == []
    assert main(["ocr", str(receipt)]) == 0
    lines = json.loads(capsys.readouterr().out)
    assert lines and set(lines[0]) == {"text", "box", "score", "page"} and len(lines[0]["box"]) == 4
    # bad input: one clean error line, exit code 2
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "strang"}}}))
    for argv, message in [
        (["extract", str(receipt), "--fields", ",", "--model", str(model_dir)], "field list is empty"),
        (["extract", str(receipt), "--schema", str(bad_schema), "--model", str(model_dir)], "not a valid JSON Schema"),
        (["extract", str(receipt), "--model", str(model_dir)], "say what to extract"),
        (["extract", str(tmp_path / "nope.pdf"), "--fields", "a", "--model", str(model_dir)], "not found"),
        (["ocr", str(bad_schema)], "not an image or PDF"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"vlm {argv[0]}: error:") and message in err and "\n" not in err


@pytest.mark.real
def test_real_weights_receipt_image_and_pdf_agree(real_vlm, receipt, tmp_path):
    """Real SmolLM2 (random tower) on a real SROIE receipt: valid grounded JSON, same from a PDF of it."""
    ocr_text = format_ocr(run_ocr(receipt))
    out = real_vlm.extract(receipt, fields=FIELDS, max_new_tokens=48)
    assert list(out) == FIELDS and grounded(out, ocr_text)
    pdf = tmp_path / "receipt.pdf"
    # RGBA makes Pillow embed the page losslessly (JPEG 2000); at 200 dpi it renders back pixel for pixel
    Image.open(receipt).convert("RGBA").save(pdf, "PDF", resolution=200)
    assert real_vlm.extract(pdf, fields=FIELDS, max_new_tokens=48) == out


# ---- value patterns ------------------------------------------------------------------------------
def test_pattern_candidates_come_from_the_ocr_text():
    from vlm.extract.patterns import AMOUNT_PATTERN, DATE_PATTERN, candidates

    text = ("Doc No\tCS00031663\tDate\t25/12/2018\n05 Mar 2018 18:24\nTotal Sales :\tRM80.90\n"
            "Cash\t1,100.00\nRound\t-0.01\nInvoice 2018030610100080498\nDate:25/01/20181:22:56PM")
    dates = candidates(DATE_PATTERN, text)
    assert dates == ("25/12/2018", "05 Mar 2018", "05 MAR 2018", "25/01/2018")  # no date in the invoice number
    amounts = candidates(AMOUNT_PATTERN, text)
    assert {"RM80.90", "80.90", "1,100.00", "-0.01"} <= set(amounts) and "0.90" not in amounts
    assert candidates(DATE_PATTERN, "no dates here 12.50") == ()


def test_pattern_fields_decode_to_a_candidate_or_null():
    from vlm.extract.extract import _machine

    doc = resolve_schema(template="receipt")
    assert [f.pattern is not None for f in doc.fields] == [False, True, False, True]
    machine = _machine(doc, "SHOP SDN BHD\nDate 25/12/2018\tTOTAL 9.00\nCASH 10.00")
    ok = '{"company": "SHOP SDN BHD", "date": "25/12/2018", "address": null, "total": "9.00"}'
    assert machine.is_done(machine.feed(machine.start(), ok))
    for bad in ('{"company": null, "date": "25/12/201', '{"company": null, "date": "2018"',
                '{"company": null, "date": null, "address": null, "total": "9.0"'):
        state = machine.feed(machine.start(), bad)
        assert state is None or not machine.is_done(machine.feed(state, '"}'))
    empty = _machine(doc, "no numbers at all")  # no candidate: only null can be written
    assert empty.feed(empty.start(), '{"company": null, "date": "') is None


def test_json_schema_pattern_keyword(tiny_vlm, receipt):
    schema = {"type": "object", "properties": {"total": {"type": "string", "pattern": r"\d+\.\d\d"}}}
    assert resolve_schema(schema=schema).fields[0].pattern == r"\d+\.\d\d"
    with pytest.raises(SchemaError, match="pattern"):
        resolve_schema(schema={"type": "object", "properties": {"t": {"type": "string", "pattern": "(\\d"}}})
    import re

    out = tiny_vlm.extract(receipt, schema=schema)
    assert out["total"] is None or re.fullmatch(r"\d+\.\d\d", out["total"])
