"""OCR-grounded chat prompts (vlm.grounding) on real OCR lines: a real SROIE receipt and a real Flickr8k photo,
the real SmolLM2 tokenizer, and the training records' prompt format (vlm.prep.sroie)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm.grounding import (ALL_TEXT_HEADER, KEY_FIELDS_HEADER, NO_TEXT, OCR_HEADER, GroundingOptions, count_tokens,
                           ground, has_text, key_fields, page_text, text_evidence, truncate_rows)
from vlm.images import load_image
from vlm.ocr import OcrLine, ocr_stats, run_ocr


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def receipt_lines(receipt):
    return run_ocr(receipt)


@pytest.fixture(scope="module")
def photo_lines(photo):
    return run_ocr(photo)


def turn(n_images: int, question: str = "What is the total amount?") -> list[dict]:
    """A normalised user turn: image parts, then the question."""
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}]


def test_auto_decision_on_a_real_receipt_and_a_real_photo(receipt_lines, photo_lines):
    opts = GroundingOptions()
    lines, chars = text_evidence(receipt_lines, opts)
    assert lines >= 20 and chars >= 300  # a receipt is full of confident text
    assert has_text(receipt_lines, opts)
    assert not has_text(photo_lines, opts)  # a photo of people outdoors: no text, or a stray word
    # the thresholds are the options' (typed, checked), not constants hidden in the code
    assert not has_text(receipt_lines, GroundingOptions(min_lines=lines + 1))
    assert not has_text(receipt_lines, GroundingOptions(min_chars=chars + 1))
    assert has_text(receipt_lines[:opts.min_lines * 3], opts)


def test_options_are_checked():
    with pytest.raises(ValueError, match="auto, always, never"):
        GroundingOptions(ocr="sometimes")
    with pytest.raises(ValueError, match="max_ocr_tokens"):
        GroundingOptions(max_ocr_tokens=0)
    with pytest.raises(ValueError, match="min_score"):
        GroundingOptions(min_score=1.5)
    with pytest.raises(ValueError, match="rapidocr"):
        GroundingOptions(engine="easyocr")
    base = GroundingOptions(max_ocr_tokens=100)
    assert GroundingOptions.resolve(base, None) is base
    assert GroundingOptions.resolve(base, "never") == GroundingOptions(ocr="never", max_ocr_tokens=100)
    with pytest.raises(TypeError, match="ocr must be"):
        GroundingOptions.resolve(base, 1)


def test_receipt_is_grounded_in_reading_order_before_the_question(receipt, receipt_lines, tokenizer):
    from vlm.extract.prompts import format_ocr

    msgs = turn(1)
    out = ground(msgs, [load_image(receipt)], GroundingOptions(max_ocr_tokens=4096), tokenizer)
    parts = out.messages[0]["content"]
    assert [p["type"] for p in parts] == ["image", "text", "text"]
    assert parts[1]["text"] == f"{OCR_HEADER}{page_text(receipt_lines)}\n\n"
    # the rules' key fields first, then all of the text in reading order
    assert parts[1]["text"].startswith(OCR_HEADER + KEY_FIELDS_HEADER)
    assert parts[1]["text"].endswith(f"\n\n{ALL_TEXT_HEADER}{format_ocr(receipt_lines)}\n\n")
    assert parts[2]["text"] == "What is the total amount?"
    assert msgs == turn(1)  # the caller's messages are untouched
    (info,) = out.images
    assert info.included and not info.truncated and info.lines == len(receipt_lines)
    plain = ground(msgs, [load_image(receipt)], GroundingOptions(max_ocr_tokens=4096, key_fields=False), tokenizer)
    assert plain.messages[0]["content"][1]["text"] == f"{OCR_HEADER}{format_ocr(receipt_lines)}\n\n"


def test_key_fields_are_the_receipt_rules_on_a_receipt_only(receipt, data_dir, receipt_lines):
    from vlm.extract.prompts import format_ocr
    from vlm.extract.receipt_rules import evidence

    gold = json.loads((data_dir / "sroie" / "train.jsonl").read_text().splitlines()[0])["entities"]
    found = key_fields(receipt_lines)
    assert found == {k: v for k, v in evidence(receipt_lines).items() if v}
    assert found["total"] == gold["total"] and found["date"] == gold["date"]  # the first train receipt
    listed = page_text(receipt_lines).split("\n\n")[0].splitlines()
    assert listed == ["Key fields:"] + [f"{k}: {v}" for k, v in found.items()]
    # a sign, a menu, a page of prose: no date and no labelled total, so no key fields and the rows as they are
    def page_of(rows):
        return [OcrLine(text, (10.0, 30.0 * i, 300.0, 30.0 * i + 20), 0.99) for i, text in enumerate(rows)]

    for page in map(page_of, (["NO PARKING", "TOW AWAY ZONE", "ENFORCED 24 HOURS"],
                 ["MENU", "NASI LEMAK 6.50", "TEH TARIK 2.20", "ROTI CANAI 1.80"],
                 ["Chapter 1", "It was a bright cold day in April,", "and the clocks were striking thirteen."])):
        assert key_fields(page) == {} and page_text(page) == format_ocr(page)
    assert page_text(receipt_lines, with_key_fields=False) == format_ocr(receipt_lines)
    assert page_text([]) == ""


def test_photo_is_left_alone_in_auto_and_marked_in_always(photo, tokenizer):
    image = load_image(photo)
    auto = ground(turn(1, "What is the dog doing?"), [image], GroundingOptions(), tokenizer)
    assert auto.messages == turn(1, "What is the dog doing?") and not auto.images[0].included
    always = ground(turn(1, "What is the dog doing?"), [image], GroundingOptions(ocr="always"), tokenizer)
    block = always.messages[0]["content"][1]["text"]
    assert block.startswith(OCR_HEADER) and always.images[0].included
    if not always.images[0].lines:
        assert block == f"{OCR_HEADER}{NO_TEXT}\n\n"


def test_never_runs_no_ocr(receipt, tokenizer):
    before = ocr_stats()
    out = ground(turn(1), [load_image(receipt)], GroundingOptions(ocr="never"), tokenizer)
    assert out.messages == turn(1) and out.images == []
    assert ocr_stats() == before


def test_truncation_keeps_whole_rows_within_the_budget(receipt_lines, tokenizer):
    from vlm.extract.prompts import format_ocr

    text = format_ocr(receipt_lines)
    rows = text.split("\n")
    full = count_tokens(tokenizer, text)
    assert truncate_rows(text, tokenizer, full) == (text, False)
    for budget in (1, 7, 60, full // 2, full - 1):
        cut, truncated = truncate_rows(text, tokenizer, budget)
        assert truncated and count_tokens(tokenizer, cut) <= budget
        kept = cut.split("\n")
        if count_tokens(tokenizer, rows[0]) <= budget:  # whole rows from the top, as many as fit
            assert kept == rows[:len(kept)]
            assert count_tokens(tokenizer, "\n".join(rows[:len(kept) + 1])) > budget
        else:  # the first row alone is over the budget: its first tokens
            assert len(kept) == 1 and rows[0].startswith(cut)


def test_budget_is_shared_by_the_grounded_images(receipt, data_dir, tokenizer):
    rows = [json.loads(line) for line in (data_dir / "sroie" / "train.jsonl").read_text().splitlines()]
    second = data_dir / "sroie" / rows[1]["image"]
    images = [load_image(receipt), load_image(second)]
    out = ground(turn(2, "Which receipt has the larger total?"), images, GroundingOptions(max_ocr_tokens=300),
                 tokenizer)
    parts = out.messages[0]["content"]
    assert [p["type"] for p in parts] == ["image", "text", "image", "text", "text"]
    for info in out.images:
        assert info.included and info.truncated and count_tokens(tokenizer, info.text) <= 150
    assert parts[1]["text"] != parts[3]["text"]


def test_only_user_images_are_grounded(receipt, tokenizer):
    msgs = [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "Here it is."}]},
            *turn(1)]
    img = load_image(receipt)
    out = ground(msgs, [img, img], GroundingOptions(), tokenizer)
    assert out.messages[0] == msgs[0]
    assert [p["type"] for p in out.messages[1]["content"]] == ["image", "text", "text"]
    assert [i.index for i in out.images] == [1]


def test_inference_prompt_is_the_training_prompt(tiny_vlm, receipt, receipt_lines, tmp_path):
    """The chat prompt a grounded question renders to is the user turn of prep's grounded question record."""
    from vlm.prep.sroie import question_record
    from vlm.train.data import to_messages

    question = "What is the total amount?"
    normed, images = tiny_vlm.prepare_messages(
        [{"role": "user", "content": [{"type": "image", "image": receipt}, {"type": "text", "text": question}]}],
        ocr="always")
    record = question_record("r", str(receipt), page_text(receipt_lines), question, "9.00")
    trained = to_messages(record)[:1]
    render = tiny_vlm.processor.apply_chat_template
    assert render(normed, tokenize=False) == render(trained, tokenize=False)
    assert len(images) == 1


def test_vlm_default_is_auto_and_never_leaves_the_prompt_as_before(tiny_vlm, receipt, photo):
    assert tiny_vlm.grounding.ocr == "auto"
    msg = [{"role": "user", "content": [{"type": "image", "image": receipt}, {"type": "text", "text": "Total?"}]}]
    grounded, _ = tiny_vlm.prepare_messages(msg)
    plain, _ = tiny_vlm.prepare_messages(msg, ocr="never")
    assert len(grounded[0]["content"]) == 3 and plain[0]["content"] == [{"type": "image"}, {"type": "text",
                                                                                             "text": "Total?"}]
    with pytest.raises(ValueError, match="ocr must be one of"):
        tiny_vlm.ask(photo, "hi", ocr="maybe", max_new_tokens=1)


def test_room_left_in_the_context_caps_the_ocr_text(receipt, tokenizer):
    image = load_image(receipt)
    roomy = ground(turn(1), [image], GroundingOptions(), tokenizer, room=10_000)
    tight = ground(turn(1), [image], GroundingOptions(), tokenizer, room=120)
    (big,), (small,) = roomy.images, tight.images
    assert big.included and small.included and small.truncated
    added = count_tokens(tokenizer, tight.messages[0]["content"][1]["text"])
    assert added <= 120 and count_tokens(tokenizer, small.text) < count_tokens(tokenizer, big.text)
    none = ground(turn(1), [image], GroundingOptions(), tokenizer, room=10)
    assert none.messages == turn(1) and none.images[0].no_room and not none.images[0].included


def test_a_receipt_fits_a_small_context(tiny_vlm, receipt):
    """The tiny model has a 512-token context: the receipt's OCR text is cut to what is left."""
    from vlm import generation

    prepared = tiny_vlm.prepare([[{"role": "user", "content": [{"type": "image", "image": receipt},
                                                                {"type": "text", "text": "What is the total?"}]}]],
                                max_new_tokens=32)
    context = generation.context_length(tiny_vlm.model)
    assert context == 512 and prepared.prompt_tokens[0] + 32 <= context
    plain = tiny_vlm.prepare([[{"role": "user", "content": [{"type": "image", "image": receipt},
                                                             {"type": "text", "text": "What is the total?"}]}]],
                             ocr="never", max_new_tokens=32)
    assert prepared.prompt_tokens[0] - plain.prompt_tokens[0] > 300  # most of the room went to OCR text
