"""data_prep: record checks and bad-record accounting, Flickr8k and SROIE preparation, the datasets loader."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from vlm.prep.flickr8k import Flickr8kPrepConfig, captions_conflict, clean_caption, consistent_captions, prepare_flickr8k
from vlm.prep.io import checked_records, write_records
from vlm.records import load_records, record_images, resolve_path
from vlm.prep.prompts import (CAPTION_PROMPTS, DETAIL_PROMPTS, FIELD_QUESTIONS, FOLLOWUP_PROMPTS, QUESTION_PROMPTS,
                              READ_PROMPTS, SAY_PROMPTS)
from vlm.records import (
    BAD_ROLE_ORDER,
    EMPTY_CAPTION,
    EMPTY_TURN,
    IMAGE_TOKEN,
    IMAGE_TOKEN_MISMATCH,
    MALFORMED,
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    BadRecordError,
    RecordAccounting,
    validate_record,
)
from vlm.cli import main
from vlm.prep import cli as prep_cli


def vlm_prep(argv: list[str]) -> int:
    """``vlm prep ARGV`` as the ``vlm`` command runs it (bad input: one error line, exit 2)."""
    return main(["prep", *argv])


def _rec(image, *turns, rid="r"):
    out = {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        out["image"] = image
    return out


@pytest.fixture()
def corrupt_image(tmp_path) -> Path:
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return path


def _bad_records(photo: Path, corrupt: Path) -> dict[str, dict]:
    """One record per bad kind (keyed by the reason expected)."""
    return {
        MISSING_IMAGE: _rec(str(photo.parent / "no-such-image.jpg"), ("human", "<image>\nHi"), ("gpt", "Hello.")),
        UNREADABLE_IMAGE: _rec(str(corrupt), ("human", "<image>\nHi"), ("gpt", "Hello.")),
        IMAGE_TOKEN_MISMATCH: _rec(str(photo), ("human", "<image>\n<image>\nTwo?"), ("gpt", "One.")),
        EMPTY_TURN: _rec(str(photo), ("human", "<image>\n"), ("gpt", "A dog.")),
        BAD_ROLE_ORDER: _rec(str(photo), ("gpt", "<image>\nA dog."), ("human", "Describe.")),
        MALFORMED: {"id": "m", "image": str(photo), "conversations": "not a list"},
    }


def test_image_token_is_the_processors():
    from vlm.processor import IMAGE_TOKEN as PROCESSOR_TOKEN

    assert IMAGE_TOKEN == PROCESSOR_TOKEN


def test_validate_record_reasons(photo, corrupt_image, tmp_path):
    for reason, record in _bad_records(photo, corrupt_image).items():
        assert validate_record(record, decode_image=True) == reason, reason
    good = _rec(str(photo), ("human", "<image>\nWhat is this?"), ("gpt", "A photo."))
    assert validate_record(good, decode_image=True) is None
    # the corrupt file exists, so without decoding it passes the fast check
    assert validate_record(_bad_records(photo, corrupt_image)[UNREADABLE_IMAGE]) is None
    # relative paths resolve against root
    rel = _rec(photo.name, ("human", "<image>\nWhat is this?"), ("gpt", "A photo."))
    assert validate_record(rel, photo.parent) is None
    assert validate_record(rel, tmp_path) == MISSING_IMAGE
    # text-only and multi-turn records are fine; more placeholder/role mistakes are caught
    assert validate_record(_rec(None, ("human", "Hi"), ("gpt", "Hello."))) is None
    multi = _rec(str(photo), ("human", "<image>\nWhat?"), ("gpt", "A."), ("human", "And?"), ("gpt", "B."))
    assert validate_record(multi) is None
    two = _rec([str(photo), str(photo)], ("human", "<image>\n<image>\nCompare."), ("gpt", "Same."))
    assert validate_record(two) is None
    assert validate_record(_rec(None, ("human", "<image>\nHi"), ("gpt", "Hello."))) == IMAGE_TOKEN_MISMATCH
    assert validate_record(_rec(str(photo), ("human", "Hi"), ("gpt", "Hello."))) == IMAGE_TOKEN_MISMATCH
    assert validate_record(_rec(str(photo), ("human", "<image>\nHi"), ("gpt", "<image> x"))) == IMAGE_TOKEN_MISMATCH
    assert validate_record(_rec(str(photo), ("human", "<image>\nHi"), ("gpt", "  "))) == EMPTY_TURN
    assert validate_record(_rec(str(photo), ("human", "<image>\nHi"))) == BAD_ROLE_ORDER
    assert validate_record(_rec(str(photo), ("human", "<image>\nA"), ("gpt", "B"), ("human", "C"))) == BAD_ROLE_ORDER
    assert validate_record(_rec(str(photo), ("human", "<image>\nA"), ("human", "B"))) == BAD_ROLE_ORDER
    assert validate_record(["not", "a", "dict"]) == MALFORMED


def test_check_counts_each_bad_kind_and_strict_stops(photo, corrupt_image, tmp_path, capsys):
    bad = _bad_records(photo, corrupt_image)
    good = [_rec(str(photo), ("human", "<image>\nWhat?"), ("gpt", f"Answer {i}."), rid=f"g{i}") for i in range(3)]
    path = tmp_path / "mixed.json"
    write_records(path, good[:2] + list(bad.values()) + good[2:])

    assert vlm_prep(["check", str(path), "--decode"]) == 1  # bad records found: non-zero, no crash
    summary = json.loads(capsys.readouterr().out)
    assert summary["bad"] == {reason: 1 for reason in bad}
    assert summary["kept"] == {str(path): 3}

    acc = RecordAccounting()
    good = list(checked_records(path, decode_images=True, accounting=acc))
    assert len(good) == 3 and sorted(r["id"] for r in good) == ["g0", "g1", "g2"]
    assert dict(acc.bad) == {reason: 1 for reason in bad}

    with pytest.raises(BadRecordError, match="missing_image"):
        list(checked_records(path, accounting=RecordAccounting(strict=True)))
    assert vlm_prep(["check", str(path), "--strict"]) == 2
    assert "error: bad record" in capsys.readouterr().err


def test_vlm_cli_has_prep(tmp_path, photo, capsys):
    from vlm.cli import COMMANDS

    assert COMMANDS["prep"] is prep_cli
    path = tmp_path / "one.json"
    write_records(path, [_rec(str(photo), ("human", "<image>\nWhat?"), ("gpt", "A photo."))])
    assert main(["prep", "check", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == {str(path): 1}


def test_clean_caption_keeps_the_words():
    assert clean_caption("A dog 's ball , red .") == "A dog's ball, red."
    assert clean_caption("man surfing") == "Man surfing."
    assert clean_caption('a sign that says " active . "') == 'A sign that says " active. "'
    for raw in ["A girl going into a wooden building .", "dogs racing", "Two dogs ( one brown ) play !"]:
        assert re.findall(r"\w+", raw.lower()) == re.findall(r"\w+", clean_caption(raw).lower())


def test_consistent_captions_rejects_conflicts():
    assert captions_conflict("Two dogs run on grass .", "Three dogs run on the grass .")
    assert captions_conflict("A man rides a bike on a road .", "A woman rides a bike on a road .")
    assert captions_conflict("A boy in a red shirt runs .", "A boy in a blue shirt runs .")
    assert not captions_conflict("A black dog runs .", "A black and white dog runs .")
    caps = ["A brown dog runs through the tall green grass .", "A dog runs through grass with a stick in its mouth .",
            "A cat sleeps .", "A brown dog runs through the tall green grass ."]
    chosen = consistent_captions(caps)
    assert chosen == [caps[0], caps[1]]
    assert consistent_captions(["A cat sleeps .", "A man plays guitar on a stage ."]) == []


def _fake_flickr(tmp_path: Path, data_dir: Path, flickr_records: list[dict]) -> Path:
    """A small Flickr8k-shaped source with one bad item of each source-level kind."""
    src = tmp_path / "flickr-src"
    (src / "images").mkdir(parents=True)
    good = flickr_records[:3]
    for r in good:
        shutil.copy(data_dir / "flickr8k" / r["image"], src / r["image"])
    (src / "images" / "broken.jpg").write_bytes(b"not an image")
    lines = [json.dumps(r) for r in good[:2]]
    lines.append(json.dumps({"image": "images/missing.jpg", "captions": ["A dog ."] * 5}))
    lines.append(json.dumps({"image": "images/broken.jpg", "captions": ["A dog ."] * 5}))
    lines.append("{this is not json")
    lines.append(json.dumps({"image": good[2]["image"], "captions": good[2]["captions"][:4] + [""]}))
    (src / "train.jsonl").write_text("\n".join(lines) + "\n")
    (src / "dev.jsonl").write_text(json.dumps(good[0]) + "\n")
    return src


def test_flickr_prep_counts_bad_source_items_and_strict_raises(tmp_path, data_dir, flickr_records, capsys):
    src = _fake_flickr(tmp_path, data_dir, flickr_records)
    summary = prepare_flickr8k(Flickr8kPrepConfig(src, tmp_path / "out"))
    assert summary["bad"] == {MALFORMED: 1, MISSING_IMAGE: 1, UNREADABLE_IMAGE: 1, EMPTY_CAPTION: 1}
    assert summary["kept"]["flickr8k_stage0_train.json"] == 3  # the item with one empty caption keeps 4
    assert summary["kept"]["flickr8k_stage1_train.json"] == 5 + 5 + 4
    assert json.loads((tmp_path / "out" / "flickr8k_summary.json").read_text())["bad_total"] == 4

    with pytest.raises(BadRecordError, match="missing_image|unreadable_image|malformed|empty_caption"):
        prepare_flickr8k(Flickr8kPrepConfig(src, tmp_path / "strict", strict=True))
    rc = vlm_prep(["flickr8k", "--src", str(src), "--out", str(tmp_path / "cli"), "--strict", "--quiet"])
    assert rc == 2 and "--strict" in capsys.readouterr().err


def _human(record, i=0):
    return record["conversations"][2 * i]["value"]


def _gpt(record, i=0):
    return record["conversations"][2 * i + 1]["value"]


def test_flickr_prep_real_subset(tmp_path, data_dir, flickr_records):
    out = tmp_path / "prep"
    src = data_dir / "flickr8k"
    assert vlm_prep(["flickr8k", "--src", str(src), "--out", str(out), "--limit", "8", "--quiet"]) == 0
    source = {Path(r["image"]).stem: r["captions"] for r in flickr_records[:8]}

    pairs = load_records(out / "flickr8k_stage0_dev.json")
    assert len(pairs) == 8
    for p in pairs:
        assert (out / p["image"]).is_file()  # relative to the output file's folder
        assert p["captions"] == [clean_caption(c) for c in source[Path(p["image"]).stem]]

    stage1 = load_records(out / "flickr8k_stage1_dev.json")
    assert len(stage1) == 8 * 5
    assert len({r["image"] for r in stage1[:8]}) == 8  # caption-round order: a prefix covers distinct images
    for r in stage1:
        caps = [clean_caption(c) for c in source[Path(r["image"]).stem]]
        assert validate_record(r, out) is None and len(r["conversations"]) == 2
        assert _human(r).startswith("<image>\n") and _human(r)[len("<image>\n"):] in CAPTION_PROMPTS
        assert _gpt(r) in caps
    for stem, caps in source.items():  # every caption of every image is used once
        assert sorted(_gpt(r) for r in stage1 if Path(r["image"]).stem == stem) == sorted(clean_caption(c) for c in caps)

    stage2 = load_records(out / "flickr8k_stage2_dev.json")
    kinds = {r["id"].rsplit("-", 1)[1] for r in stage2}
    assert kinds == {"single", "multi", "detail"}
    for r in stage2:
        caps = [clean_caption(c) for c in source[Path(r["image"]).stem]]
        assert validate_record(r, out, decode_image=True) is None
        kind = r["id"].rsplit("-", 1)[1]
        prompt = _human(r)[len("<image>\n"):]
        if kind == "single":
            assert prompt in CAPTION_PROMPTS + QUESTION_PROMPTS and _gpt(r) in caps
        elif kind == "multi":
            assert prompt in QUESTION_PROMPTS and _human(r, 1) in FOLLOWUP_PROMPTS
            assert _gpt(r, 0) in caps and _gpt(r, 1) in caps and _gpt(r, 0) != _gpt(r, 1)
        else:  # detail: two or three distinct human captions, verbatim, joined by a space
            assert prompt in DETAIL_PROMPTS
            used = [c for c in caps if c in _gpt(r)]
            assert 2 <= len(used) <= 3 and len(" ".join(used)) == len(_gpt(r))

    # deterministic for a seed; another seed changes the prompts, not the answers' source
    again = tmp_path / "again"
    prepare_flickr8k(Flickr8kPrepConfig(src, again, limit=8))
    other = tmp_path / "other"
    prepare_flickr8k(Flickr8kPrepConfig(src, other, limit=8, seed=1, raw_captions=True))
    for name in ("flickr8k_stage1_dev.json", "flickr8k_stage2_dev.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
        assert (other / name).read_bytes() != (out / name).read_bytes()
    raw = load_records(other / "flickr8k_stage1_dev.json")
    assert all(_gpt(r) in source[Path(r["image"]).stem] for r in raw)  # --raw-captions: byte for byte


def test_loader_reads_written_file(tmp_path, data_dir, photo):
    out = tmp_path / "prep"
    prepare_flickr8k(Flickr8kPrepConfig(data_dir / "flickr8k", out, limit=4))
    path = out / "flickr8k_stage2_train.json"
    records = load_records(path)
    good = list(checked_records(path))
    assert len(good) == len(records) > 0
    row = good[0]
    (image,) = record_images(row)
    assert resolve_path(image, path.parent).is_file()
    assert row["conversations"] == records[0]["conversations"]

    pairs = load_records(out / "flickr8k_stage0_train.json")
    assert len(pairs) == 4 and all(resolve_path(p["image"], out).is_file() for p in pairs)
    assert all(len(p["captions"]) == 5 for p in pairs)

    # text-only and multi-image records, JSONL too
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps(r) for r in [
        _rec(None, ("human", "Hi"), ("gpt", "Hello."), rid="t"),
        _rec([str(photo), str(photo)], ("human", "<image>\n<image>\nSame?"), ("gpt", "Yes."), rid="two"),
    ]) + "\n")
    good = list(checked_records(mixed))
    assert [r["id"] for r in good] == ["t", "two"] and record_images(good[0]) == []
    assert record_images(good[1]) == [str(photo), str(photo)]


def _sroie_rows(data_dir: Path) -> dict[str, dict]:
    lines = (data_dir / "sroie" / "train.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_sroie_prep_dataset_ocr(tmp_path, data_dir):
    from vlm.extract.prompts import fields_prompt, format_ocr
    from vlm.grounding import ocr_block, page_text
    from vlm.messages import SHORT_ANSWER

    from vlm.prep.sroie import FIELDS, read_dataset_ocr

    out = tmp_path / "sroie"
    src = data_dir / "sroie"
    args = ["sroie", "--src", str(src), "--out", str(out), "--ocr", "dataset", "--limit", "40", "--quiet",
            "--transcribe"]
    assert vlm_prep(args) == 0
    rows = _sroie_rows(data_dir)
    split = json.loads((out / "sroie_split.json").read_text())
    assert len(split["train_ids"]) + len(split["val_ids"]) == 40 and split["val_ids"]

    def first_word(rid):
        return rows[rid]["entities"]["company"].upper().split()[0]

    assert not {first_word(i) for i in split["train_ids"]} & {first_word(i) for i in split["val_ids"]}

    for side, ids in (("train", split["train_ids"]), ("val", split["val_ids"])):
        stage1 = load_records(out / f"sroie_stage1_{side}.json")
        stage2 = load_records(out / f"sroie_stage2_{side}.json")
        assert {r["id"].split("-")[1] for r in stage1} == set(ids)
        assert {r["id"].split("-")[1] for r in stage2} == set(ids)
        for r in stage1:
            row = rows[r["id"].split("-")[1]]
            assert validate_record(r, out) is None and _human(r)[len("<image>\n"):] in READ_PROMPTS
            ocr_lines = (src / row["ocr"]).read_text().splitlines()
            transcripts = [" ".join(l.split(",", 8)[8].split()) for l in ocr_lines if l.count(",") >= 8]
            cells = [c for line in _gpt(r).split("\n") for c in line.split("\t")]
            assert sorted(cells) == sorted(t for t in transcripts if t)  # the human lines, all, verbatim
        for r in stage2:
            rid, kind = r["id"].split("-")[1], r["id"].split("-", 2)[2]
            row = rows[rid]
            assert validate_record(r, out) is None
            if kind in ("fields", "subset"):
                answer = json.loads(_gpt(r))
                fields = list(answer)
                assert set(fields) <= set(FIELDS) and (kind == "subset" or fields == list(FIELDS))
                assert answer == {f: row["entities"].get(f) or None for f in fields}  # blank/absent -> null
                ocr_text = format_ocr(read_dataset_ocr(src / row["ocr"], row["scale"]))
                assert _human(r) == "<image>\n" + fields_prompt(fields, ocr_text)  # inference's own builder
            else:  # OCR-grounded questions: chat's own OCR block (vlm.grounding), then the question
                lines = read_dataset_ocr(src / row["ocr"], row["scale"])
                ocr_text = format_ocr(lines)
                head = "<image>\n" + ocr_block(page_text(lines))  # with a receipt's key fields, as chat shows it
                assert _human(r).startswith(head)
                question = _human(r)[len(head):]
                if kind == "say":
                    assert question in SAY_PROMPTS and _gpt(r) == ocr_text
                else:
                    field = kind.split("-")[1]
                    assert question.removesuffix("\n" + SHORT_ANSWER) in FIELD_QUESTIONS[field]
                    assert _gpt(r) == row["entities"][field]
        assert sum(r["id"].endswith("-say") for r in stage2) == len(ids)
        # the same single-field questions, without OCR, in the format `vlm eval vqa` reads
        from vlm.eval.records import load_eval_records

        vqa = load_eval_records(out / f"sroie_vqa_{side}.jsonl", ("image", "question", "answer"))
        asked = {r["id"]: _human(r) for r in stage2 if "-ask-" in r["id"]}
        assert {q.id for q in vqa} == set(asked) and len(vqa) == 2 * len(ids)  # --questions 2 (the default)
        for q in vqa:
            assert q.image.is_file() and "OCR" not in q.data["question"]
            assert q.data["question"] in asked[q.id] and q.data["answer"] == rows[q.id.split("-")[1]]["entities"][
                q.data["field"]]

    good = list(checked_records(out / "sroie_stage2_val.json"))
    assert len(good) == len(load_records(out / "sroie_stage2_val.json"))
    # each slice also in the evaluation format, loadable by `vlm eval sroie`
    from vlm.eval.records import load_eval_records

    for split in ("train", "val"):
        recs = load_eval_records(out / f"sroie_{split}.jsonl", ("image", "entities"))
        ids = {r.split("-")[1] for r in (x["id"] for x in load_records(out / f"sroie_stage1_{split}.json"))}
        assert {r.id for r in recs} == ids and all(r.image.is_file() for r in recs)


def test_find_span_and_swap_fields():
    from vlm.prep.vendor_swap import find_span, swap_fields, swap_pairs

    text = "Ace Mart\n(123-X)\nNO.1, JALAN SATU,\n81100 JOHOR\nDate:\t01/02/2018\nTOTAL\t9.00"
    entities = {"company": "ACE MART", "address": "NO.1, JALAN SATU, 81100 JOHOR", "date": "01/02/2018",
                "total": "9.00"}
    assert find_span(text, "ace  mart") == (0, 8) and find_span(text, "NO.1, JALAN SATU, 81100 JOHOR") is not None
    assert find_span(text, "BEST MART") is None and find_span(text, "") is None
    donor = "BEST MART SDN BHD\nLOT 5, JALAN DUA,\n50000 KL\nTOTAL\t3.00"
    donor_entities = {"company": "BEST MART SDN BHD", "address": "LOT 5, JALAN DUA, 50000 KL", "total": "3.00"}
    new_text, new_entities = swap_fields(text, entities, donor, donor_entities)
    assert new_text == "BEST MART SDN BHD\n(123-X)\nLOT 5, JALAN DUA,\n50000 KL\nDate:\t01/02/2018\nTOTAL\t9.00"
    assert new_entities == {**entities, "company": "BEST MART SDN BHD", "address": "LOT 5, JALAN DUA, 50000 KL"}
    assert swap_fields(text, entities, "nothing here", donor_entities) is None
    pairs = swap_pairs(["A", "A", "B", "C"], 2, seed=0)
    assert len(pairs) == 8 and all(i != j and not {i, j} <= {0, 1} for i, j in pairs)


def test_sroie_prep_vendor_swaps(tmp_path, data_dir):
    from vlm.prep.vendor_swap import find_span

    out = tmp_path / "sroie"
    args = ["sroie", "--src", str(data_dir / "sroie"), "--out", str(out), "--ocr", "dataset", "--limit", "40",
            "--questions", "0", "--swaps", "1", "--quiet"]
    assert vlm_prep(args) == 0
    rows = _sroie_rows(data_dir)
    train = load_records(out / "sroie_stage2_train.json")
    swaps = [r for r in train if "-swap-" in r["id"]]
    assert swaps and not [r for r in load_records(out / "sroie_stage2_val.json") if "-swap-" in r["id"]]
    changed = 0
    for r in swaps:
        assert validate_record(r, out) is None
        rid, donor = r["id"].split("-")[1], r["id"].split("-swap-")[1]
        answer, own, theirs = json.loads(_gpt(r)), rows[rid]["entities"], rows[donor]["entities"]
        assert (answer["date"], answer["total"]) == (own.get("date") or None, own.get("total") or None)
        for f in ("company", "address"):
            if answer[f] != own.get(f):
                changed += 1
                assert answer[f] == theirs[f] and find_span(_human(r), theirs[f]) is not None
                assert find_span(_human(r), own[f]) is None
    assert changed >= len(swaps)


def test_sroie_prep_chat_only(tmp_path, data_dir):
    """--no-extraction: the same question and transcription records as a full run, without the JSON ones."""
    base = ["sroie", "--src", str(data_dir / "sroie"), "--ocr", "dataset", "--limit", "20", "--questions", "2",
            "--transcribe", "--swaps", "1", "--quiet"]
    assert vlm_prep(base + ["--out", str(tmp_path / "all")]) == 0
    assert vlm_prep(base + ["--out", str(tmp_path / "chat"), "--no-extraction"]) == 0
    for split in ("train", "val"):
        full = load_records(tmp_path / "all" / f"sroie_stage2_{split}.json")
        chat = load_records(tmp_path / "chat" / f"sroie_stage2_{split}.json")
        extraction = [r for r in full if _gpt(r).startswith("{")]  # JSON answers: extraction (and swaps)
        assert extraction and chat and not [r for r in chat if _gpt(r).startswith("{")]
        assert chat == [r for r in full if r not in extraction]
    summary = json.loads((tmp_path / "chat" / "sroie_summary.json").read_text())
    assert summary["config"]["extraction"] is False


def test_sroie_full_vendor_split_is_disjoint_and_near_target(data_dir):
    from vlm.records import ImageChecker
    from vlm.prep.sroie import load_receipts, split_vendors, vendor_key

    receipts = load_receipts(data_dir / "sroie", None, RecordAccounting(), ImageChecker(decode=False))
    train, val, info = split_vendors(receipts, 0.15, seed=0, max_val_group=12)
    assert len(train) + len(val) == len(receipts) == 476
    assert 0.12 <= len(val) / len(receipts) <= 0.18
    words = lambda rs: {r.entities["company"].upper().split()[0] for r in rs}  # noqa: E731
    assert not words(train) & words(val)
    assert not {vendor_key(r.entities["company"]) for r in train} & set(info["val_groups"])
    assert "GARDENIA" in info["train_groups"]  # big chains stay in train
    assert split_vendors(receipts, 0.15, seed=0, max_val_group=12)[2] == info
    assert split_vendors(receipts, 0.15, seed=1, max_val_group=12)[2]["val_ids"] != info["val_ids"]


@pytest.mark.real
def test_sroie_prep_rapidocr_uses_inference_ocr(tmp_path, data_dir):
    from vlm.extract.prompts import fields_prompt, format_ocr
    from vlm.ocr import run_ocr

    from vlm.prep.sroie import FIELDS, SroiePrepConfig, prepare_sroie

    out = tmp_path / "sroie"
    summary = prepare_sroie(SroiePrepConfig(data_dir / "sroie", out, ocr="rapidocr", limit=1))
    assert summary["bad_total"] == 0
    (record,) = [r for r in load_records(out / "sroie_stage2_train.json") if r["id"].endswith("-fields")]
    image = (out / record["image"]).resolve()
    assert _human(record) == "<image>\n" + fields_prompt(list(FIELDS), format_ocr(run_ocr(image)))
