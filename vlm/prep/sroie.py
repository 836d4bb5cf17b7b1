"""SROIE receipts -> stage-1 reading records and stage-2 extraction records, with a vendor-disjoint split.

Outputs in ``out_dir`` (``{split}`` is ``train`` and ``val``; image paths relative to ``out_dir``):

- ``sroie_stage1_{split}.json``: "read this receipt" -> the receipt's text: the dataset's human OCR
  transcripts in inference's reading order (:func:`vlm.ocr.reading_order`), in the same text format as the
  OCR block of extraction prompts (:func:`vlm.extract.prompts.format_ocr`: one row per line, TAB between
  segments of one row).
- ``sroie_stage2_{split}.json``: per receipt, (1) the four fields -> JSON, (2) a random subset of the
  fields in random order -> JSON, both with the prompt and OCR text format that inference uses
  (:mod:`vlm.extract.prompts` and :mod:`vlm.ocr`), (3) ``questions`` single-field questions
  ("What is the total?") -> the annotated value, verbatim, and (4) with ``transcribe``, one "what does it
  say?" question -> the OCR text. Questions (3, 4) are OCR-grounded exactly as chat grounds them at inference
  (:mod:`vlm.grounding`: the OCR block, then the question), half of them followed by the short-answer
  instruction that ``vlm eval vqa`` appends. ``questions=0`` without ``transcribe`` gives extraction records
  alone; ``extraction=False`` leaves (1, 2) out, for a chat-only mix.
- ``sroie_vqa_{split}.jsonl`` (when ``questions`` > 0): the same single-field questions in the VQA evaluation
  format (``id``, ``image``, ``question``, ``answer``, ``field``), for ``vlm eval vqa --data``: the question
  alone, as a user asks it in chat (grounding adds the OCR text at inference).
- ``sroie_train.jsonl`` / ``sroie_val.jsonl``: each slice in the evaluation format (``id``, ``image``,
  ``entities``), for ``vlm eval sroie --data``;
- ``sroie_split.json``: the vendor groups and receipt ids on each side; ``sroie_summary.json``: counts,
  bad records by reason, timings.

The split holds out whole vendor groups: group = first word of the upper-cased ``company`` with
non-alphanumeric characters dropped (so ``MR.`` and ``MR`` are one group). Groups of at most
``max_val_group`` receipts are shuffled with the seed and taken whole until ``val_fraction`` of the receipts
are held out; big chains stay in train, so validation measures new vendors, like the held-out test set.

OCR text in stage-2 prompts (``ocr``):

- ``"rapidocr"`` (default): runs :func:`vlm.ocr.run_ocr` on each receipt image, exactly as inference does,
  so training sees the same engine's text, errors included. Slow the first time (about 1-3 s per receipt
  on CPU); results are cached by image content, so later runs are fast.
- ``"dataset"``: the dataset's own OCR lines (human-checked transcripts; boxes scaled to the stored image
  by ``scale``), put in the same :class:`vlm.ocr.OcrLine` form. Fast, but cleaner than what the model
  will see at inference, so a model trained on it may trust OCR text more than it should.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .io import image_ref, write_checked, write_json
from .prompts import FIELD_QUESTIONS, READ_PROMPTS, SAY_PROMPTS, pick, rng_for
from vlm.records import MALFORMED, ImageChecker, RecordAccounting, RecordProblem, read_jsonl

FIELDS = ("company", "date", "address", "total")
OCR_MODES = ("rapidocr", "dataset")
IMG = "<image>\n"


@dataclass
class SroiePrepConfig:
    src: Path
    out: Path
    ocr: str = "rapidocr"
    seed: int = 0
    limit: int | None = None  # at most this many receipts (first in file order), before the split
    val_fraction: float = 0.15
    max_val_group: int = 12  # bigger vendor groups always stay in train
    questions: int = 2  # single-field questions per receipt
    swaps: int = 0  # vendor-swapped extraction records per train receipt (see vlm.prep.vendor_swap)
    transcribe: bool = False  # one OCR-grounded "what does it say?" record per receipt
    extraction: bool = True  # the two extraction records per receipt in stage 2 (off: questions, transcriptions)
    absolute_paths: bool = False
    decode_images: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src), Path(self.out)
        if self.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, got {self.ocr!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if not 0 <= self.questions <= len(FIELDS):
            raise ValueError(f"questions must be 0..{len(FIELDS)}, got {self.questions}")
        if self.swaps < 0:
            raise ValueError(f"swaps must be >= 0, got {self.swaps}")


@dataclass
class Receipt:
    id: str
    image: Path  # absolute
    entities: dict[str, str]
    ocr_file: Path
    scale: float


def vendor_key(company: str) -> str:
    """The vendor group of a company name: its first word, upper-cased, letters and digits only."""
    words = company.upper().split()
    return re.sub(r"[^0-9A-Z]", "", words[0]) if words else ""


def read_dataset_ocr(path: Path, scale: float = 1.0) -> list:
    """The dataset's OCR lines as :class:`vlm.ocr.OcrLine` (score 1.0), put in inference's reading order.

    Each ``x1,y1,...,x4,y4,text`` line (the text may hold commas) becomes the axis-aligned box of its four
    points, multiplied by ``scale`` to land on the stored image.
    """
    from vlm.ocr import OcrLine, reading_order

    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = raw.split(",", 8)
        if len(parts) < 9 or not parts[8].strip():
            continue
        try:
            xy = [float(v) * scale for v in parts[:8]]
        except ValueError:
            continue
        xs, ys = xy[0::2], xy[1::2]
        lines.append(OcrLine(" ".join(parts[8].split()), (min(xs), min(ys), max(xs), max(ys)), 1.0))
    return reading_order(lines)


def split_vendors(
    receipts: list[Receipt], val_fraction: float, seed: int, max_val_group: int
) -> tuple[list[Receipt], list[Receipt], dict]:
    """Splits whole vendor groups: returns ``(train, val, info)``."""
    groups: dict[str, list[Receipt]] = {}
    for r in receipts:
        groups.setdefault(vendor_key(r.entities.get("company", "")), []).append(r)
    target = round(val_fraction * len(receipts))
    eligible = sorted(k for k, g in groups.items() if len(g) <= max_val_group)
    random.Random(seed).shuffle(eligible)
    val_keys: list[str] = []
    taken = 0
    for key in eligible:
        if taken >= target:
            break
        if taken + len(groups[key]) <= target or not val_keys:
            val_keys.append(key)
            taken += len(groups[key])
    val_set = set(val_keys)
    train = [r for r in receipts if vendor_key(r.entities.get("company", "")) not in val_set]
    val = [r for r in receipts if vendor_key(r.entities.get("company", "")) in val_set]
    info = {
        "rule": "group = first word of upper-cased company, non-alphanumerics dropped; "
        f"groups of <= {max_val_group} receipts shuffled with seed {seed} and taken whole",
        "val_fraction_target": val_fraction,
        "train_groups": sorted(k for k in groups if k not in val_set),
        "val_groups": sorted(val_set),
        "train_ids": [r.id for r in train],
        "val_ids": [r.id for r in val],
    }
    return train, val, info


def load_receipts(src: Path, limit: int | None, acc: RecordAccounting, images: ImageChecker) -> list[Receipt]:
    index = src / "train.jsonl"
    out = []
    for lineno, row in read_jsonl(index, strict=False, lines=limit, missing="is --src the sroie folder?"):
        i = lineno - 1
        try:
            if row is None:
                raise ValueError("the line is not valid JSON")
            rid, entities = str(row["id"]), row["entities"]
            image, ocr_file = src / row["image"], src / row["ocr"]
            scale = float(row.get("scale", 1.0))
            if not isinstance(entities, dict) or not all(isinstance(v, str) for v in entities.values()):
                raise TypeError("entities must map field names to strings")
        except (KeyError, TypeError, ValueError) as exc:
            acc.reject(RecordProblem(MALFORMED, f"line {i + 1}: {type(exc).__name__}: {exc}"), f"#{i}", str(index))
            continue
        problem = images(image)
        if problem:
            acc.reject(problem, rid, str(index))
            continue
        if not ocr_file.is_file():
            acc.reject(RecordProblem(MALFORMED, f"OCR file not found: {ocr_file}"), rid, str(index))
            continue
        out.append(Receipt(rid, image.resolve(), {k: v for k, v in entities.items() if v.strip()}, ocr_file, scale))
    return out


def dataset_ocr_lines(receipt: Receipt) -> list:
    return read_dataset_ocr(receipt.ocr_file, receipt.scale)


def rapidocr_lines(receipt: Receipt) -> list:
    from vlm.ocr import run_ocr

    return run_ocr(receipt.image, engine="rapidocr")  # named: the mode is rapidocr whatever the default engine


def stage1_record(receipt: Receipt, image: str, text: str, seed: int) -> dict:
    prompt = pick(rng_for(seed, receipt.id, "read"), READ_PROMPTS)
    return {
        "id": f"sroie-{receipt.id}-read",
        "image": image,
        "conversations": [{"from": "human", "value": IMG + prompt}, {"from": "gpt", "value": text}],
    }


def extraction_record(record_id: str, image: str, ocr_text: str, entities: dict, fields: list[str]) -> dict:
    """One extraction example: the inference prompt for ``fields`` over ``ocr_text`` -> their JSON."""
    from vlm.extract.prompts import fields_answer, fields_prompt

    return {
        "id": record_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": IMG + fields_prompt(fields, ocr_text)},
            {"from": "gpt", "value": fields_answer(entities, fields)},
        ],
    }


def swapped_records(items: list[tuple[Receipt, str, str]], per_receipt: int, seed: int) -> list[dict]:
    """Vendor-swapped four-field extraction records for ``(receipt, image, ocr_text)`` items."""
    from .vendor_swap import swap_fields, swap_pairs

    out = []
    for i, j in swap_pairs([vendor_key(r.entities.get("company", "")) for r, _, _ in items], per_receipt, seed):
        (receipt, image, text), (donor, _, donor_text) = items[i], items[j]
        swapped = swap_fields(text, receipt.entities, donor_text, donor.entities)
        if swapped is not None:
            out.append(extraction_record(f"sroie-{receipt.id}-swap-{donor.id}", image, swapped[0], swapped[1],
                                         list(FIELDS)))
    return out


def grounded_question(ocr_text: str, question: str) -> str:
    """The user text after ``"<image>\\n"`` of an OCR-grounded chat question: what :func:`vlm.grounding.ground`
    puts there at inference (the OCR block), then the question."""
    from vlm.grounding import ocr_block

    return ocr_block(ocr_text) + question


def question_record(record_id: str, image: str, ocr_text: str, question: str, answer: str) -> dict:
    return {"id": record_id, "image": image, "conversations": [
        {"from": "human", "value": IMG + grounded_question(ocr_text, question)}, {"from": "gpt", "value": answer}]}


def field_questions(receipt: Receipt, seed: int, questions: int) -> list[tuple[str, str]]:
    """``(field, question)`` for up to ``questions`` annotated fields of a receipt (seeded)."""
    rng = rng_for(seed, receipt.id, "ask")
    present = [f for f in FIELDS if f in receipt.entities]
    return [(f, pick(rng, FIELD_QUESTIONS[f])) for f in rng.sample(present, min(questions, len(present)))]


def stage2_records(receipt: Receipt, image: str, ocr_text: str, seed: int, questions: int,
                   transcribe: bool = False, chat_text: str | None = None, extraction: bool = True) -> list[dict]:
    """Extraction records (all four fields; a random subset), OCR-grounded single-field questions and, with
    ``transcribe``, an OCR-grounded "what does it say?" record for one receipt.

    Extraction always asks from the four SROIE fields, like inference's ``receipt`` template; a field the
    annotators left empty (one receipt has no printed address) is answered ``null``. Questions are only
    asked about annotated fields; half of them (seeded) end with the short-answer instruction.
    ``extraction=False`` leaves the two extraction records out. ``chat_text``: the OCR block's text as chat
    shows it (:func:`vlm.grounding.page_text`, with the key fields of a receipt); default ``ocr_text``.
    Extraction prompts and the transcription's answer use ``ocr_text``.
    """
    from vlm.messages import SHORT_ANSWER

    chat_text = ocr_text if chat_text is None else chat_text

    rng = rng_for(seed, receipt.id, "extract")
    subset = rng.sample(FIELDS, rng.randint(1, len(FIELDS) - 1))
    out = [extraction_record(f"sroie-{receipt.id}-{name}", image, ocr_text, receipt.entities, fields)
           for name, fields in (("fields", list(FIELDS)), ("subset", subset)) if extraction]
    suffix = rng_for(seed, receipt.id, "suffix")
    for f, question in field_questions(receipt, seed, questions):
        if suffix.random() < 0.5:
            question = f"{question}\n{SHORT_ANSWER}"
        out.append(question_record(f"sroie-{receipt.id}-ask-{f}", image, chat_text, question, receipt.entities[f]))
    if transcribe and ocr_text.strip():
        question = pick(rng_for(seed, receipt.id, "say"), SAY_PROMPTS)
        out.append(question_record(f"sroie-{receipt.id}-say", image, chat_text, question, ocr_text.strip()))
    return out


def vqa_rows(receipt: Receipt, image: str, seed: int, questions: int) -> list[dict]:
    """The receipt's single-field questions in the VQA evaluation format (the same questions as stage 2)."""
    return [{"id": f"sroie-{receipt.id}-ask-{f}", "image": image, "question": q, "answer": receipt.entities[f],
             "field": f} for f, q in field_questions(receipt, seed, questions)]


def prepare_sroie(cfg: SroiePrepConfig, progress: bool = False) -> dict:
    """Writes the stage-1/2 train and val files into ``cfg.out``; returns the summary dict."""
    t0 = time.perf_counter()
    acc = RecordAccounting(strict=cfg.strict)
    images = ImageChecker(decode=cfg.decode_images)
    cfg.out.mkdir(parents=True, exist_ok=True)
    receipts = load_receipts(cfg.src, cfg.limit, acc, images)
    train, val, split_info = split_vendors(receipts, cfg.val_fraction, cfg.seed, cfg.max_val_group)
    write_json(cfg.out / "sroie_split.json", split_info)
    get_lines: Callable[[Receipt], list] = rapidocr_lines if cfg.ocr == "rapidocr" else dataset_ocr_lines
    from vlm.extract.prompts import format_ocr
    from vlm.grounding import page_text

    files: dict[str, str] = {}
    ocr_seconds = 0.0
    for split, items in (("train", train), ("val", val)):
        # the slice in the evaluation format (`vlm eval sroie --data sroie_<split>.jsonl`): image + key fields
        eval_file = cfg.out / f"sroie_{split}.jsonl"
        eval_rows = [{"id": r.id, "image": image_ref(r.image, cfg.out, absolute=cfg.absolute_paths),
                      "entities": r.entities} for r in items]
        eval_file.write_text("".join(json.dumps(row) + "\n" for row in eval_rows))
        files[f"eval_{split}"] = str(eval_file)
        stage1, stage2 = [], []
        if cfg.questions:  # single-field questions for `vlm eval vqa` (no OCR in them: chat grounding adds it)
            vqa_file = cfg.out / f"sroie_vqa_{split}.jsonl"
            vqa = [row for r in items for row in vqa_rows(r, image_ref(r.image, cfg.out, absolute=cfg.absolute_paths),
                                                            cfg.seed, cfg.questions)]
            vqa_file.write_text("".join(json.dumps(row) + "\n" for row in vqa))
            files[f"vqa_{split}"] = str(vqa_file)
        extracted: list[tuple[Receipt, str, str]] = []
        iterator = items
        if progress:
            from tqdm import tqdm

            iterator = tqdm(items, desc=f"sroie {split} ({cfg.ocr} OCR)", unit="receipt")
        for receipt in iterator:
            image = image_ref(receipt.image, cfg.out, absolute=cfg.absolute_paths)
            text = format_ocr(dataset_ocr_lines(receipt))
            if text.strip():
                stage1.append(stage1_record(receipt, image, text, cfg.seed))
            else:
                acc.reject(RecordProblem(MALFORMED, "the OCR file has no text lines"), receipt.id, str(receipt.ocr_file))
            t = time.perf_counter()
            try:
                lines = get_lines(receipt)
                ocr_text, chat_text = format_ocr(lines), page_text(lines)
            except Exception as exc:  # noqa: BLE001 - one receipt's OCR failure must not stop the run
                acc.reject(RecordProblem(MALFORMED, f"OCR failed: {type(exc).__name__}: {exc}"), receipt.id, split)
                continue
            finally:
                ocr_seconds += time.perf_counter() - t
            stage2.extend(stage2_records(receipt, image, ocr_text, cfg.seed, cfg.questions, cfg.transcribe,
                                         chat_text=chat_text, extraction=cfg.extraction))
            extracted.append((receipt, image, ocr_text))
        if split == "train" and cfg.swaps and cfg.extraction:
            stage2.extend(swapped_records(extracted, cfg.swaps, cfg.seed))
        for stage, records in (("stage1", stage1), ("stage2", stage2)):
            files[f"{stage}_{split}"] = str(write_checked(cfg.out, f"sroie_{stage}_{split}.json", records, images, acc))
    summary = {
        "source": str(cfg.src),
        "out": str(cfg.out),
        "config": {"ocr": cfg.ocr, "seed": cfg.seed, "limit": cfg.limit, "val_fraction": cfg.val_fraction,
                   "max_val_group": cfg.max_val_group, "questions": cfg.questions, "swaps": cfg.swaps,
                   "transcribe": cfg.transcribe, "extraction": cfg.extraction,
                   "absolute_paths": cfg.absolute_paths},
        "receipts": {"train": len(train), "val": len(val)},
        "vendor_groups": {"train": len(split_info["train_groups"]), "val": len(split_info["val_groups"])},
        "files": files,
        **acc.summary(),
        "ocr_seconds": round(ocr_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(cfg.out / "sroie_summary.json", summary)
    return summary
