"""OCR-grounded chat: each image's OCR text goes into the user turn beside the image, as in training.

Contract (:func:`ground`), for a normalised conversation (:func:`vlm.messages.normalise`) and its images:

- ``GroundingOptions.ocr`` decides, per call: ``"never"`` changes nothing and runs no OCR; ``"always"`` puts an
  OCR block after every image of every user message (``"(no text found)"`` when OCR finds nothing);
  ``"auto"`` (the default) runs OCR and puts the block only after images where it found real text
  (:func:`has_text`: at least ``min_lines`` confident lines holding ``min_chars`` letters and digits in all).
  Images in system or assistant messages are never grounded.
- The block is the OCR text format of the extraction prompts vlm-tiny was trained on
  (:func:`vlm.extract.prompts.format_ocr`: rows in reading order, same-row cells TAB-joined), as a text part
  ``"OCR text:\\n<text>\\n\\n"`` right after the image part. With one image followed by the question, the
  user turn reads ``<image>\\nOCR text:\\n...\\n\\n<question>``: the training prompts' layout.
- With ``GroundingOptions.key_fields`` (the default), a page that reads as a receipt or invoice
  (:func:`vlm.extract.receipt_rules.reads_as_receipt`: a date or a labelled total) has the receipt rules'
  values (:func:`vlm.extract.receipt_rules.evidence`, the receipt template's reader) above its rows:
  ``"Key fields:\\ncompany: ...\\ndate: ...\\n\\nAll text:\\n<rows>"`` (:func:`page_text`). A 135M model copies a
  labelled value far more reliably than it picks the right row of a receipt (docs/ocr.md).
- OCR comes from :func:`vlm.ocr.run_ocr` with ``GroundingOptions.engine`` (cached per engine and image
  content), so a conversation asked again, or the same receipt in another request, does not run OCR twice.
- The OCR text of one conversation is held to ``max_ocr_tokens`` tokens of the model's tokenizer, and to the
  ``room`` the caller has left in the context (after the rest of the prompt and the answer's budget), shared
  equally by the grounded images; whole rows are kept from the top, the rest dropped (``truncated``). When
  there is no room for even a few rows, no block is added (``no_room``) and the prompt is as without OCR.
- The decision uses only the OCR lines (scores and text), never file names or the question.

Nothing else in the conversation changes: the messages are copied, the caller's are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

OcrMode = Literal["auto", "always", "never"]
OCR_MODES: tuple[str, ...] = get_args(OcrMode)
OCR_HEADER = "OCR text:\n"  # as in vlm.extract.prompts.fields_prompt
NO_TEXT = "(no text found)"


@dataclass(frozen=True)
class GroundingOptions:
    """Whether and how OCR text is put into chat prompts (see the module docstring).

    The ``auto`` thresholds were set by measurement (docs/ocr.md, "OCR-grounded chat"): on Flickr8k
    training photos and SROIE training receipts, a confident line is one with an OCR score of at least
    ``min_score`` and at least two letters or digits. They were measured with rapidocr, the default
    ``engine`` (``None``: :data:`vlm.ocr.DEFAULT_ENGINE`)."""

    ocr: OcrMode = "auto"
    max_ocr_tokens: int = 768  # OCR text of one conversation, all images together
    min_lines: int = 3
    min_chars: int = 20
    min_score: float = 0.8
    engine: str | None = None  # a vlm.ocr.OcrEngine: "rapidocr", "tesseract" or "both"
    key_fields: bool = True  # the receipt rules' values above the rows of a page that reads as a receipt

    def __post_init__(self) -> None:
        if self.engine is not None:
            from .ocr import check_engine

            check_engine(self.engine)  # a ValueError naming the choices
        if self.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, got {self.ocr!r}")
        if self.max_ocr_tokens < 1:
            raise ValueError(f"max_ocr_tokens must be at least 1, got {self.max_ocr_tokens}")
        if self.min_lines < 1 or self.min_chars < 0:
            raise ValueError(f"min_lines must be >= 1 and min_chars >= 0, got {self.min_lines}, {self.min_chars}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    @classmethod
    def resolve(cls, base: "GroundingOptions | None", ocr: "OcrMode | GroundingOptions | None") -> "GroundingOptions":
        """``ocr`` for one call: a mode overrides ``base``'s, options replace it, None keeps ``base``."""
        base = base if base is not None else cls()
        if ocr is None:
            return base
        if isinstance(ocr, GroundingOptions):
            return ocr
        if not isinstance(ocr, str):
            raise TypeError(f"ocr must be one of {', '.join(OCR_MODES)} or GroundingOptions, got {type(ocr).__name__}")
        return replace(base, ocr=ocr)


@dataclass
class ImageText:
    """What grounding did for one image (in order of appearance in the conversation)."""

    index: int
    lines: int  # OCR lines found
    confident_lines: int
    confident_chars: int
    included: bool
    truncated: bool = False
    no_room: bool = False  # OCR found text, but the context had no room for it
    text: str = ""  # the OCR text put into the prompt ("" when not included)


@dataclass
class Grounded:
    messages: list[dict]
    images: list[ImageText] = field(default_factory=list)


def _alnum(text: str) -> int:
    return sum(c.isalnum() for c in text)


def text_evidence(lines, options: GroundingOptions) -> tuple[int, int]:
    """``(confident lines, letters and digits in them)``: lines scored at least ``min_score`` with at least two
    letters or digits."""
    confident = [ln for ln in lines if ln.score >= options.min_score and _alnum(ln.text) >= 2]
    return len(confident), sum(_alnum(ln.text) for ln in confident)


def has_text(lines, options: GroundingOptions | None = None) -> bool:
    """The ``auto`` decision: the OCR found real text (not a stray word on a T-shirt or a sign)."""
    options = options or GroundingOptions()
    n, chars = text_evidence(lines, options)
    return n >= options.min_lines and chars >= options.min_chars


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate_rows(text: str, tokenizer, budget: int) -> tuple[str, bool]:
    """The longest prefix of whole rows (lines) of ``text`` within ``budget`` tokens; ``(text, truncated)``.
    A first row longer than the budget is cut to its first ``budget`` tokens."""
    if count_tokens(tokenizer, text) <= budget:
        return text, False
    rows = text.split("\n")
    lo, hi = 0, len(rows) - 1  # the answer is a row count in [lo, hi]: rows[:lo] fits, rows[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(tokenizer, "\n".join(rows[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        ids = tokenizer(rows[0], add_special_tokens=False)["input_ids"][:budget]
        return tokenizer.decode(ids), True
    return "\n".join(rows[:lo]).rstrip(), True


KEY_FIELDS_HEADER = "Key fields:\n"
ALL_TEXT_HEADER = "All text:\n"


def key_fields(lines) -> dict[str, str]:
    """The receipt rules' values found on a page that reads as a receipt (``{}`` for any other page)."""
    from .extract import receipt_rules
    from .extract.layout import ocr_rows

    rows = ocr_rows(lines)  # built once: the rules read rows, and rows (plain strings) read as themselves
    if not receipt_rules.reads_as_receipt(rows):
        return {}
    return {name: value for name, value in receipt_rules.evidence(rows).items() if value}


def page_text(lines, with_key_fields: bool = True) -> str:
    """The text of one image's OCR block: its rows (:func:`vlm.extract.prompts.format_ocr`), under the page's
    :func:`key_fields` when ``with_key_fields`` and there are any."""
    from .extract.prompts import format_ocr

    rows = format_ocr(lines)
    fields = key_fields(lines) if with_key_fields and rows.strip() else {}
    if not fields:
        return rows
    listed = "\n".join(f"{name}: {value}" for name, value in fields.items())
    return f"{KEY_FIELDS_HEADER}{listed}\n\n{ALL_TEXT_HEADER}{rows}"


def ocr_block(text: str) -> str:
    """The text part put after an image: the training prompts' OCR block, then a blank line."""
    return f"{OCR_HEADER}{text.strip() or NO_TEXT}\n\n"


MIN_SHARE = 16  # tokens: below this per image, a block would say nothing useful


def ground(messages: list[dict], images: list, options: GroundingOptions, tokenizer, ocr=None,
           room: int | None = None) -> Grounded:
    """Put OCR blocks into ``messages`` (normalised: image parts are ``{"type": "image"}``, ``images`` the
    loaded images in order). ``ocr``: the OCR function (default :func:`vlm.ocr.run_ocr` with
    ``options.engine``); ``room``: the most tokens the blocks may add in all (None: only ``max_ocr_tokens``)."""
    if options.ocr == "never" or not images:
        return Grounded(messages)
    if ocr is None:
        from .ocr import run_ocr

        def ocr(image):
            return run_ocr(image, engine=options.engine)
    # which image parts belong to user messages, and what OCR found on them
    found: dict[int, tuple[str, ImageText]] = {}
    index = 0
    for msg in messages:
        for part in msg["content"]:
            if part.get("type") != "image":
                continue
            if msg["role"] == "user":
                lines = ocr(images[index])
                n, chars = text_evidence(lines, options)
                keep = options.ocr == "always" or has_text(lines, options)
                found[index] = (page_text(lines, options.key_fields) if keep else "", ImageText(index, len(lines), n, chars, keep))
            index += 1
    kept = [i for i, (_, info) in found.items() if info.included]
    budget = options.max_ocr_tokens
    if kept and room is not None:  # each block also costs its header and blank line (and a token of slack)
        budget = min(budget, room - len(kept) * (count_tokens(tokenizer, ocr_block(".")) + 1))
    if kept and budget // len(kept) < MIN_SHARE:
        for i in kept:
            found[i][1].included, found[i][1].no_room = False, True
        kept = []
    if kept:
        share = budget // len(kept)
        for i in kept:
            text, info = found[i]
            info.text, info.truncated = truncate_rows(text, tokenizer, share) if text else ("", False)
    out, index = [], 0
    for msg in messages:
        parts = []
        for part in msg["content"]:
            parts.append(dict(part))
            if part.get("type") == "image":
                if index in found and found[index][1].included:
                    parts.append({"type": "text", "text": ocr_block(found[index][1].text)})
                index += 1
        out.append({**msg, "content": parts})
    return Grounded(out, [found[i][1] for i in sorted(found)])
