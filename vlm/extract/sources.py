"""Where each extracted value came from: the OCR lines (and their boxes) a value was copied from, and a
drawing of those boxes on the page.

Extraction is grounded: a string value is a substring of the page's OCR text as the prompt shows it
(``prompts.format_ocr``: lines in reading order, rows on lines, same-row cells TAB-joined), compared after
whitespace collapsing and lower-casing (``constrained.Grounding``). :func:`locate` searches each page's
lines the same way, so a value found there maps back to the lines its characters lie on:

- a value inside a longer line (``"12.30"`` in ``"TOTAL RM 12.30"``) gives that line;
- a value across lines (an address on three rows, or ``TOTAL<TAB>12.30`` split into two cells) gives every
  line it touches;
- only occurrences that start and end at word boundaries count, as in grounding (``"2.30"`` has no source
  in ``"12.30"``);
- a value printed more than once gives one occurrence, the best by, in order: its row naming the field
  (``"total"`` for ``total``, ``"date"`` for ``invoice_date``: receipts print the label beside the amount);
  covering most of its lines' text (a whole line over a fragment); the first in reading order;
- a typed value that is not text any more (a number from a ``"type": "number"`` schema, an ISO date from
  ``"format": "date"``) is matched against the amounts / dates printed on the page, parsed the same way;
- a value of at least :data:`CLOSE_MIN_CHARS` characters found nowhere as written (a reader corrected an OCR
  misread, ``"SUN VICTORY SDN BHD"`` from ``"SUN VICTORY SON BHD"``; a date printed against the time,
  ``"19-03-201818:08:38"``) gives the run of up to four consecutive lines holding the closest copy: at
  least :data:`CLOSE_SHARE` of its characters, in order, within a stretch not much longer than the value,
  and one of its words (of three characters or more) as written;
- ``None``, booleans and values found nowhere get no boxes.

Boxes are whole OCR line boxes (``x0, y0, x1, y1`` in page-image pixels), as the engines return them.
:func:`draw_sources` draws them on the page, one colour per field with the field's name as a label;
:func:`annotate_pages` does that for several pages stacked into one image (the UI's Extract tab).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from PIL import Image, ImageDraw, ImageFont

from ..ocr_line import OcrLine

#: Distinct colours, one per field in field order (cycled past ten fields).
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0fa3b1", "#f032e6", "#808000",
           "#9a6324", "#000075")


#: A value found nowhere as written is looked for approximately only from this length (shorter ones, "2.30" in
#: "12.30", would find false sources) ...
CLOSE_MIN_CHARS = 8
#: ... and matches a stretch of lines holding at least this share of its characters in order.
CLOSE_SHARE = 0.9


@dataclass(frozen=True)
class SourceBox:
    """One OCR line a value was read from."""

    page: int  # 1-based
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in page-image pixels
    text: str  # the OCR line's text

    def to_dict(self) -> dict:
        return {"page": self.page, "box": [round(v, 1) for v in self.box], "text": self.text}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _joined(a: str, b: str) -> bool:  # as constrained._joined: two characters of one word or number
    return (a.isalpha() and b.isalpha()) or (a.isdigit() and b.isdigit())


class _Page:
    """One page's lines as the grounding corpus: normalised line texts joined by single spaces, with each
    line's character span."""

    def __init__(self, lines: list[OcrLine]):
        self.lines, self.spans, parts, pos = [], [], [], 0
        for line in lines:
            text = _norm(line.text)
            if not text:
                continue
            if parts:
                pos += 1
            self.lines.append(line)
            self.spans.append((pos, pos + len(text)))
            parts.append(text)
            pos += len(text)
        self.corpus = " ".join(parts)

    def occurrences(self, value: str) -> list[tuple[int, int]]:
        out, start = [], self.corpus.find(value)
        while start >= 0 and value:
            out.append((start, start + len(value)))
            start = self.corpus.find(value, start + 1)
        return out

    def bounded(self, s: int, e: int) -> bool:
        c = self.corpus
        return (s == 0 or not _joined(c[s - 1], c[s])) and (e == len(c) or not _joined(c[e - 1], c[e]))

    def touched(self, s: int, e: int) -> list[int]:
        """Indices of the lines whose text overlaps corpus[s:e]."""
        return [i for i, (a, b) in enumerate(self.spans) if a < e and s < b]


def _label_words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if len(w) >= 3]


def _row_names_field(page: _Page, idx: list[int], words: list[str]) -> bool:
    """Some line on the rows of lines ``idx`` holds one of ``words`` as a whole word."""
    if not words:
        return False
    rows = [page.lines[i] for i in idx]
    for line in page.lines:
        if not any(_same_band(line, r) for r in rows):
            continue
        text = line.text.lower()
        if any(re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", text) for w in words):
            return True
    return False


def _same_band(a: OcrLine, b: OcrLine) -> bool:
    """Same page and vertical overlap of at least half the smaller height (one printed row)."""
    ha, hb = max(1.0, a.box[3] - a.box[1]), max(1.0, b.box[3] - b.box[1])
    overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    return a.page == b.page and overlap >= 0.5 * min(ha, hb)


def _typed_hits(page: _Page, value) -> list[tuple[int, int]]:
    """Spans of the printed amounts / dates on the page that parse to a typed ``value`` (a number, or an ISO
    date string)."""
    from .patterns import AMOUNT_PATTERN, DATE_PATTERN, compile_pattern
    from .schema import parse_date, parse_number

    if isinstance(value, (int, float)):
        pattern, parse, target = AMOUNT_PATTERN, parse_number, float(value)
        amounts = re.compile(r"-?\d[\d,.]*\d|\d")  # bare numbers too: integers, amounts without two decimals
    elif isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d", value):
        pattern, parse, target, amounts = DATE_PATTERN, parse_date, value, None
    else:
        return []
    compiled = compile_pattern(pattern)
    out = []
    for m in compiled.finditer(page.corpus, overlapped=True):
        if parse(m.group()) == target:
            out.append(m.span())
    if not out and amounts is not None:
        out = [m.span() for m in amounts.finditer(page.corpus) if parse(m.group()) == target]
    return out


def _best(page: _Page, spans: list[tuple[int, int]], words: list[str]):
    """The best occurrence (see the module docstring) as (rank key, line indices)."""
    best = None
    for s, e in spans:
        idx = page.touched(s, e)
        if not idx or not page.bounded(s, e):
            continue
        covered = (e - s) / sum(page.spans[i][1] - page.spans[i][0] for i in idx)
        key = (not _row_names_field(page, idx, words), -covered)
        if best is None or key < best[0]:  # strict: the first in reading order wins ties
            best = (key, idx)
    return best


def _close(page: _Page, value: str, max_lines: int = 4):
    """The closest copy of ``value`` in up to ``max_lines`` consecutive lines (module docstring) as (rank key,
    line indices), or None."""
    if len(value) < CLOSE_MIN_CHARS:
        return None
    best, words = None, [w for w in value.split() if len(w) >= 3] or [value]
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(value)  # the matcher indexes its second sequence once
    for i in range(len(page.lines)):
        for j in range(i, min(i + max_lines, len(page.lines))):
            start, end = page.spans[i][0], page.spans[j][1]
            window = page.corpus[start:end]
            if not any(w in window for w in words):  # a close copy keeps at least one word as written
                continue
            matcher.set_seq1(window)
            blocks = [b for b in matcher.get_matching_blocks() if b.size]
            share = sum(b.size for b in blocks) / len(value)
            if share < CLOSE_SHARE:
                continue
            s, e = start + blocks[0].a, start + blocks[-1].a + blocks[-1].size
            if e - s > 1.15 * len(value) + 2:
                continue
            key = (-share, e - s)
            if best is None or key < best[0]:
                best = (key, page.touched(s, e))
    return best


def locate(lines: list[OcrLine], values: dict) -> dict[str, list[SourceBox]]:
    """For each key of ``values``, the boxes of the OCR lines its value came from (``[]`` when none).

    ``lines``: the document's OCR lines in reading order, with their ``page`` (as :func:`vlm.ocr.run_ocr` /
    :meth:`vlm.VLM.ocr` return them); ``values``: extracted values, raw strings or typed (an extraction
    result dict). See the module docstring for the matching rules. A value is looked for on one page at a time
    and, found on several, taken from the first page that has it; approximately only when no page has it as
    written.
    """
    pages: dict[int, list[OcrLine]] = {}
    for line in lines:
        pages.setdefault(line.page, []).append(line)
    corpora = [_Page(ls) for _, ls in sorted(pages.items())]
    out: dict[str, list[SourceBox]] = {}
    for name, value in values.items():
        out[name] = []
        if value is None or isinstance(value, bool):
            continue
        text = _norm(value) if isinstance(value, str) else None
        words = _label_words(str(name))
        hit = _first_page(corpora, lambda page: _best(page, page.occurrences(text) if text else [], words)
                          or _best(page, _typed_hits(page, value), words))
        if hit is None and text:
            hit = _first_page(corpora, lambda page: _close(page, text))
        if hit is not None:
            page, (_, idx) = hit
            out[name] = [SourceBox(page.lines[i].page, tuple(page.lines[i].box), page.lines[i].text) for i in idx]
    return out


def _first_page(corpora: list[_Page], search):
    """``(page, found)`` for the first page on which ``search(page)`` finds something, or None."""
    return next(((page, found) for page in corpora if (found := search(page)) is not None), None)


# -- drawing ------------------------------------------------------------------------------------------
def field_colours(names) -> dict[str, str]:
    """Field name -> hex colour from :data:`PALETTE`, in the given order."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_sources(image: Image.Image, sources: dict[str, list[SourceBox]], page: int = 1, *,
                 colours: dict[str, str] | None = None, scale: float = 1.0) -> Image.Image:
    """A copy of ``image`` (page ``page`` of the document) with the boxes of ``sources`` on it: an outline in
    the field's colour per box (nested when fields share a line), and a label with the field's name above the
    field's first box on the page.

    ``colours``: field -> colour (default :func:`field_colours` of ``sources``' keys, so a field keeps its colour
    whatever is found); ``scale``: factor from box coordinates to ``image`` pixels (for a resized page).
    """
    colours = colours or field_colours(sources)
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    width = max(2, round(side / 500))
    font = _font(max(11, round(side / 70)))
    labels, drawn = [], {}
    for name, boxes in sources.items():
        colour = colours.get(name, PALETTE[0])
        mine = [b for b in boxes if b.page == page]
        for i, b in enumerate(mine):
            x0, y0, x1, y1 = (v * scale for v in b.box)
            pad = width * (1 + 2 * drawn.get(b.box, 0))  # a line two fields share: nested outlines
            drawn[b.box] = drawn.get(b.box, 0) + 1
            draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), outline=colour, width=width)
            if i == 0:
                labels.append((name, colour, x0 - pad, y0 - pad))
    placed: list[tuple[float, float, float, float]] = []
    for name, colour, x, y in labels:  # after every box, so no outline crosses a label
        l, t, r, btm = draw.textbbox((0, 0), name, font=font)
        w, h = r - l + 6, btm - t + 4
        top = y - h if y - h >= 0 else y
        for px0, py0, px1, py1 in placed:  # fields on one line: labels side by side, not on top of each other
            if x < px1 and px0 < x + w and top < py1 and py0 < top + h:
                x = px1 + 2
        placed.append((x, top, x + w, top + h))
        draw.rectangle((x, top, x + w, top + h), fill=colour)
        draw.text((x + 3 - l, top + 2 - t), name, fill="white", font=font)
    return out


def annotate_pages(page_images: dict[int, Image.Image], sources: dict[str, list[SourceBox]], *,
                   max_side: int = 1600, colours: dict[str, str] | None = None):
    """Pages (number -> image) with their boxes drawn (:func:`draw_sources`), stacked top to bottom into one
    image whose long side is at most ``max_side``; returns ``(image, [((x0, y0, x1, y1), field), ...])`` with
    the boxes in that image's pixels (the value of a ``gradio.AnnotatedImage``)."""
    if not page_images:
        raise ValueError("no page images to annotate")
    colours = colours or field_colours(sources)
    numbers = sorted(page_images)
    width = max(page_images[n].width for n in numbers)
    height = sum(round(page_images[n].height * width / page_images[n].width) for n in numbers)
    shrink = min(1.0, max_side / max(width, height))
    sheet = Image.new("RGB", (max(1, round(width * shrink)), max(1, round(height * shrink))), "white")
    annotations, top = [], 0
    for n in numbers:
        page = page_images[n]
        scale = width / page.width * shrink
        size = (max(1, round(page.width * scale)), max(1, round(page.height * scale)))
        shown = page.convert("RGB").resize(size, Image.Resampling.LANCZOS) if scale != 1 else page
        sheet.paste(draw_sources(shown, sources, n, colours=colours, scale=scale), (0, top))
        for name, boxes in sources.items():
            for b in boxes:
                if b.page == n:
                    x0, x1 = (min(max(0, round(v * scale)), size[0]) for v in (b.box[0], b.box[2]))
                    y0, y1 = (min(max(0, round(v * scale)), size[1]) + top for v in (b.box[1], b.box[3]))
                    annotations.append(((x0, y0, x1, y1), name))
        top += size[1]
    return sheet, annotations
