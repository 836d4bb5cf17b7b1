"""The extraction pipeline: pages -> OCR -> prompt (image + OCR text) -> constrained decoding -> typed,
validated JSON.

Per page: the page image is OCR'd (cached), the OCR text goes into the prompt in the compact format of
``prompts.format_ocr`` together with the image, and the model writes a JSON object under the constraint of
``constrained.JsonObjectMachine``: exactly the requested keys, each value ``null`` or a string found in the
page's OCR text (grounding; ``ground=False`` lifts it). A page without any OCR text gives all-null values
without running the model. The typing rules of ``schema`` then turn strings into dates/numbers/booleans.

Multi-page rule: ``per_page=False`` (default) merges pages field by field, keeping the first non-null value
in page order, and stops rendering pages once every field has a value. Free-form (``template="kv"``)
merges keys the same way (first value wins). ``per_page=True`` returns one result per page.

If the OCR text doesn't fit the model's context with the answer budget, rows are dropped from the end of
the OCR text (never from the image) until it fits.

Provenance: ``sources=True`` also returns where each value came from (``sources.locate``: the OCR lines, with
their boxes, that the decoded string was copied from), found in the lines the page was OCR'd into for the
prompt, so OCR runs once. A merged field's boxes are those of the page its value was taken from.
"""
from __future__ import annotations

from dataclasses import replace

from .. import generation
from ..config import GenerationOptions
from ..documents import iter_pages
from ..errors import InputError
from ..messages import user_turn
from ..ocr import OcrEngine, OcrLine, check_engine, run_ocr
from .constrained import JsonObjectMachine, ValueRule, token_texts
from .layout import line_candidates, ocr_rows
from .patterns import candidates
from .prompts import Template, fields_prompt, format_ocr, freeform_prompt, get_template
from .schema import DocSchema, coerce, resolve_schema, validate
from .sources import SourceBox, locate

FREEFORM_TOKENS = 384


def default_max_new_tokens(doc: DocSchema) -> int:
    """Answer budget: the JSON skeleton plus room for a typical value per field."""
    if doc.freeform:
        return FREEFORM_TOKENS
    return 16 + sum(8 + min(64, f.max_length // 3 + 4) for f in doc.fields)


def _machine(doc: DocSchema, ocr_text: str | None, lines: list[OcrLine] | None = None,
             evidence: dict | None = None, writable: frozenset[str] | None = None) -> JsonObjectMachine:
    """The decoder's acceptor; with ``ocr_text`` values are grounded in it, pattern fields become a
    choice among the OCR substrings matching their pattern, line fields (with the page's ``lines``) a
    choice among whole rows / runs of rows (``layout.line_candidates``), and a reader field with a value in
    ``evidence`` that value. With ``writable`` (the characters the tokenizer has a token of their own for),
    line and evidence choices holding any other character are dropped: the decoder could not finish them."""
    if doc.freeform:
        return JsonObjectMachine(None, corpus=ocr_text)
    rules = []
    rows = None
    evidence = evidence or {}
    for f in doc.fields:
        choices = f.choices
        if (choices is None and ocr_text is not None and f.name in doc.reader_fields and evidence.get(f.name)
                and _can_write(evidence[f.name], writable)):
            choices = (evidence[f.name],)
        elif choices is None and f.pattern and ocr_text is not None:
            choices = tuple(c for c in candidates(f.pattern, ocr_text) if len(c) <= f.max_length)
        elif choices is None and f.lines is not None and ocr_text is not None and lines is not None:
            rows = ocr_rows(lines) if rows is None else rows
            choices = tuple(c for c in line_candidates(rows, f.lines, f.max_length) if _can_write(c, writable))
        rules.append(ValueRule(choices, f.max_length))
    return JsonObjectMachine(doc.names, rules, corpus=ocr_text)


def _can_write(value: str, writable: frozenset[str] | None) -> bool:
    return writable is None or all(ch in writable for ch in value)


def _writable(vlm) -> frozenset[str]:
    """Characters with a token of their own: any string of them can be decoded (``"À"`` has none in SmolLM2's
    byte-level vocabulary, only as part of longer tokens, so a choice holding it can dead-end)."""
    return frozenset(t for t in token_texts(vlm.processor.tokenizer).texts if t and len(t) == 1)


def _prompt(doc: DocSchema, ocr_text: str) -> str:
    if doc.freeform:
        return freeform_prompt(ocr_text)
    return fields_prompt(doc.names, ocr_text, doc.descriptions)


def _prompt_tokens(vlm, prompt: str) -> int:
    """Token count of the full chat prompt, image tokens included."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = vlm.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    n = len(vlm.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return n - 1 + int(vlm.model.config.image_seq_length)


def fit_ocr_text(vlm, doc: DocSchema, ocr_text: str, max_new_tokens: int) -> str:
    """The longest prefix (in rows) of ``ocr_text`` whose prompt fits the context with the answer budget."""
    budget = generation.context_length(vlm.model) - max_new_tokens
    if _prompt_tokens(vlm, _prompt(doc, ocr_text)) <= budget:
        return ocr_text
    rows = ocr_text.split("\n")
    lo, hi = 0, len(rows) - 1  # invariant: rows[:lo] fits (checked below for lo=0), rows[:hi+1] doesn't
    if _prompt_tokens(vlm, _prompt(doc, "")) > budget:
        raise InputError(
            f"the extraction prompt does not fit the model's context ({generation.context_length(vlm.model)} "
            f"tokens) with max_new_tokens={max_new_tokens}, even without OCR text"
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _prompt_tokens(vlm, _prompt(doc, "\n".join(rows[:mid]))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return "\n".join(rows[:lo])


def extract_page(vlm, image, lines: list[OcrLine], doc: DocSchema, opts: GenerationOptions,
                 ground: bool = True) -> dict:
    """Raw decoded values (strings or None) of one page image with its OCR lines."""
    ocr_text = format_ocr(lines)
    if not ocr_text.strip():
        return {} if doc.freeform else doc.empty()
    evidence = _evidence(doc, lines) if ground else {}
    writable = _writable(vlm)
    decided = _reader_decides(doc, evidence, writable)
    if decided is not None:  # before any prompt work: the model will not run
        return decided
    shown = fit_ocr_text(vlm, doc, ocr_text, opts.max_new_tokens)
    # the grammar decides what may follow: only the sampling options carry over (no stop strings,
    # repetition rules or beams to fight it); the OCR text is in the prompt already
    plain = GenerationOptions(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                              seed=opts.seed)
    machine = _machine(doc, ocr_text if ground else None, lines, evidence, writable)
    prepared = vlm.prepare([user_turn(image, _prompt(doc, shown))], plain, ocr="never", answer_format=machine)
    tally = generation.Tally()
    vlm.generate(prepared, tally=tally)
    (proc,) = prepared.logits_processors
    values = proc.values(tally.row())
    for name, value in evidence.items():  # the reader fills what the model left null
        if values.get(name) is None and value:
            values[name] = value
    return values


def _reader_decides(doc: DocSchema, evidence: dict, writable: frozenset[str]) -> dict | None:
    """The values when the template's reader decides every field, else ``None``.

    A reader field with a writable value and no schema choices is decoded as that value or ``null``, and a
    ``null`` is then filled with the same value: whatever the model writes, the field comes back as the
    reader's value. When that holds for every field the model's answer cannot change the result, so it
    need not run (on SROIE val the receipt rules decide all four fields of 55 of 71 receipts)."""
    if doc.freeform or not doc.names:
        return None
    by_name = {f.name: f for f in doc.fields}
    for name in doc.names:
        if (name not in doc.reader_fields or not evidence.get(name) or by_name[name].choices is not None
                or not _can_write(evidence[name], writable)):
            return None
    return {name: evidence[name] for name in doc.names}


def reader_decided(vlm, doc: DocSchema, lines: list[OcrLine]) -> dict | None:
    """The page's values when the template's reader decides every field (the model is not run), else ``None``."""
    return _reader_decides(doc, _evidence(doc, lines), _writable(vlm))


def _evidence(doc: DocSchema, lines: list[OcrLine]) -> dict:
    """The template reader's values for this page's fields (strings only; ``{}`` without a reader)."""
    if doc.freeform or doc.reader is None:
        return {}
    found = doc.reader(lines) or {}
    names = set(doc.names)
    return {k: " ".join(v.split()) for k, v in found.items() if k in names and isinstance(v, str) and v.strip()}


def _typed(doc: DocSchema, raw: dict) -> dict:
    if doc.freeform:
        return {k: (" ".join(v.split()) if isinstance(v, str) else None) for k, v in raw.items()}
    return {f.name: coerce(f, raw.get(f.name)) for f in doc.fields}


def extract(vlm, source, fields=None, schema=None, pages=None, template: str | Template | None = None, *,
            per_page: bool = False, ground: bool = True, dpi: float | None = None,
            options: GenerationOptions | None = None, ocr_engine: OcrEngine | None = None,
            sources: bool = False, **gen):
    """Extract fields from an image or PDF. See the module docstring for the rules.

    ``ocr_engine``: the OCR engine (``"rapidocr"``, ``"tesseract"`` or ``"both"``; default
    :data:`vlm.ocr.DEFAULT_ENGINE`).

    Returns a dict (fields / JSON Schema / template), a pydantic instance (pydantic schema), or with
    ``per_page=True`` a list of ``{"page": n, "fields": ...}``. With ``sources=True``: ``(result, boxes)``
    where ``boxes`` maps each field to the :class:`~vlm.extract.sources.SourceBox` list of the OCR lines its
    value came from (``[]`` for a null or unlocated value); with ``per_page=True`` one such dict per page.
    """
    if isinstance(template, str):
        template = get_template(template)
    doc = resolve_schema(fields, schema, template)
    ocr_engine = check_engine(ocr_engine)
    if gen.get("max_new_tokens") is None and options is None:
        # never more than half the context, so small-context models still have room for the OCR text
        gen["max_new_tokens"] = min(default_max_new_tokens(doc), generation.context_length(vlm.model) // 2)
    opts = GenerationOptions.from_kwargs(options, **gen)
    page_kw = {} if dpi is None else {"dpi": dpi}
    results: list[tuple[int, dict, dict]] = []
    merged: dict = {} if doc.freeform else doc.empty()
    merged_boxes: dict[str, list[SourceBox]] = {}
    for page in iter_pages(source, pages, limits=vlm.limits, **page_kw):
        lines = [replace(line, page=page.number) for line in run_ocr(page.image, engine=ocr_engine)]
        raw = extract_page(vlm, page.image, lines, doc, opts, ground)
        typed = _typed(doc, raw)
        boxes = {}
        if sources:  # from the raw strings: typing may change them (ISO dates, parsed numbers)
            found = locate(lines, raw)
            boxes = {k: (found.get(k, []) if v is not None else []) for k, v in typed.items()}
        results.append((page.number, typed, boxes))
        for key, value in typed.items():
            if merged.get(key) is None:
                merged[key] = value
                merged_boxes[key] = boxes.get(key, [])
        if not per_page and not doc.freeform and all(v is not None for v in merged.values()):
            break  # later pages can't change a "first non-null" merge
    if per_page:
        out = [{"page": n, "fields": validate(doc, values)} for n, values, _ in results]
        return (out, [boxes for _, _, boxes in results]) if sources else out
    result = validate(doc, merged)
    if sources:
        return result, {key: merged_boxes.get(key, []) for key in merged}
    return result

