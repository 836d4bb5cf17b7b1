"""Flickr8k -> stage-0 pairs, stage-1 caption records and stage-2 instruction records.

Everything the answers say comes from the five human captions of the image: no invented facts.
Captions are only tidied (:func:`clean_caption`: tokeniser spaces before punctuation removed, first letter
upper-cased, a final period added); the words are the annotators' own. ``raw_captions=True`` keeps them
byte for byte.

Outputs in ``out_dir`` (``{split}`` is ``train`` and ``dev``; image paths relative to ``out_dir``):

- ``flickr8k_stage0_{split}.json``: pairs ``{"id", "image", "captions": [5 captions]}``.
- ``flickr8k_stage1_{split}.json``: one record per caption by default (``stage1_captions=5``; fewer means
  that many captions per image, drawn with the seed): a short "describe" prompt -> that caption.
  Records are ordered caption-round first, so any prefix of the file covers distinct images first.
- ``flickr8k_stage2_{split}.json``: per image, (1) a brief-describe or "what is happening?" question ->
  one caption; (2) a two-turn record: such a prompt -> caption A, then a follow-up "describe it another
  way" -> a different caption B; (3) when the captions allow it, "describe in detail" -> two or three
  captions that agree (:func:`consistent_captions`) joined into one paragraph.
- ``flickr8k_summary.json``: counts, bad records by reason, timings.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from .io import image_ref, write_checked, write_json, write_records
from .prompts import CAPTION_PROMPTS, DETAIL_PROMPTS, FOLLOWUP_PROMPTS, QUESTION_PROMPTS, pick, rng_for
from vlm.records import EMPTY_CAPTION, MALFORMED, ImageChecker, RecordAccounting, RecordProblem, check_pair, read_jsonl

SPLITS = ("train", "dev")
IMG = "<image>\n"

_STOP = frozenset(
    "a an the and or of in on at to with is are was were be being been its it his her their there this that "
    "some while into onto from by for as up down out over near next another other one each through".split()
)
_MALE = frozenset("man men boy boys guy guys gentleman gentlemen male he his him".split())
_FEMALE = frozenset("woman women girl girls lady ladies female she her".split())
_NUMBERS = frozenset("two three four five six seven eight nine ten".split())
_COLORS = frozenset("black white brown red blue green yellow orange pink purple gray grey tan golden silver".split())


@dataclass
class Flickr8kPrepConfig:
    src: Path
    out: Path
    seed: int = 0
    limit: int | None = None  # at most this many images per split
    stage1_captions: int = 5  # captions per image used in stage 1 (5 = all)
    raw_captions: bool = False
    absolute_paths: bool = False
    decode_images: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src), Path(self.out)
        if not 1 <= self.stage1_captions <= 5:
            raise ValueError(f"stage1_captions must be 1..5, got {self.stage1_captions}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")


def clean_caption(text: str) -> str:
    """Tidies a tokenised Flickr8k caption without changing its words.

    ``"A dog 's ball , red ."`` -> ``"A dog's ball, red."``: spaces collapsed and removed before
    punctuation, first letter upper-cased, a final period added when the caption has no end mark.
    """
    t = " ".join(text.split())
    t = re.sub(r"\s+([.,;:!?)])", r"\1", t)
    t = re.sub(r"\(\s+", "(", t)
    t = re.sub(r"\s+'(s|re|ve|ll|d|m|t)\b", r"'\1", t)
    if not t:
        return t
    t = t[0].upper() + t[1:]
    if t[-1] not in '.!?"':
        t += "."
    return t


def _content_words(caption: str) -> set[str]:
    words = re.findall(r"[a-z]+", caption.lower())
    out = set()
    for w in words:
        if w in _STOP or len(w) < 3:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]  # crude plural folding: dogs -> dog
        out.add(w)
    return out


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption.lower()))


def captions_conflict(a: str, b: str) -> bool:
    """True when two captions may disagree: different counts ("two" vs "three"), genders, or colours
    (both name colours and neither set holds the other: "a red shirt" vs "a blue shirt")."""
    wa, wb = _words(a), _words(b)
    na, nb = wa & _NUMBERS, wb & _NUMBERS
    if na and nb and na != nb:
        return True
    ca, cb = wa & _COLORS, wb & _COLORS
    if ca and cb and not (ca <= cb or cb <= ca):
        return True
    male_only_a, female_only_a = bool(wa & _MALE) and not wa & _FEMALE, bool(wa & _FEMALE) and not wa & _MALE
    male_only_b, female_only_b = bool(wb & _MALE) and not wb & _FEMALE, bool(wb & _FEMALE) and not wb & _MALE
    return (male_only_a and female_only_b) or (female_only_a and male_only_b)


def consistent_captions(captions: list[str], max_n: int = 3, min_shared: int = 2, min_new: int = 2) -> list[str]:
    """Two or three captions that agree, most detailed first, each adding something; ``[]`` if none do.

    The anchor is the caption with the most content words. Another caption joins when it shares at least
    ``min_shared`` content words with the anchor (same scene, same subject), conflicts with no chosen
    caption (counts, genders, colours) and adds at least ``min_new`` content words not said yet.
    """
    unique = list(dict.fromkeys(c for c in captions if c.strip()))
    if len(unique) < 2:
        return []
    ranked = sorted(unique, key=lambda c: (-len(_content_words(c)), unique.index(c)))
    chosen = [ranked[0]]
    anchor = _content_words(ranked[0])
    said = set(anchor)
    for cand in ranked[1:]:
        words = _content_words(cand)
        if len(words & anchor) < min_shared or len(words - said) < min_new:
            continue
        if any(captions_conflict(cand, c) for c in chosen):
            continue
        chosen.append(cand)
        said |= words
        if len(chosen) == max_n:
            break
    return chosen if len(chosen) >= 2 else []


def _conv(*pairs: tuple[str, str]) -> list[dict]:
    turns = []
    for human, gpt in pairs:
        turns.append({"from": "human", "value": human})
        turns.append({"from": "gpt", "value": gpt})
    return turns


def stage1_records(key: str, image: str, captions: list[str], seed: int, per_image: int) -> list[dict]:
    """``per_image`` caption records of one image, its captions in a seeded order (one per round)."""
    order = list(range(len(captions)))
    rng_for(seed, key, "stage1-order").shuffle(order)
    return [
        {"id": f"flickr8k-{key}-s1-{ci}", "image": image,
         "conversations": _conv((IMG + pick(rng_for(seed, f"{key}#{ci}", "stage1-prompt"), CAPTION_PROMPTS),
                                 captions[ci]))}
        for ci in order[:per_image]
    ]


def stage2_records(key: str, image: str, captions: list[str], seed: int) -> list[dict]:
    rng = rng_for(seed, key, "stage2")
    out = []
    single_pool = CAPTION_PROMPTS if rng.random() < 0.5 else QUESTION_PROMPTS
    a = rng.randrange(len(captions))
    out.append(
        {"id": f"flickr8k-{key}-s2-single", "image": image,
         "conversations": _conv((IMG + pick(rng, single_pool), captions[a]))}
    )
    distinct = list(dict.fromkeys(captions))
    if len(distinct) >= 2:
        first, second = rng.sample(distinct, 2)
        out.append(
            {"id": f"flickr8k-{key}-s2-multi", "image": image,
             "conversations": _conv((IMG + pick(rng, QUESTION_PROMPTS), first), (pick(rng, FOLLOWUP_PROMPTS), second))}
        )
    detail = consistent_captions(captions)
    if detail:
        out.append(
            {"id": f"flickr8k-{key}-s2-detail", "image": image,
             "conversations": _conv((IMG + pick(rng, DETAIL_PROMPTS), " ".join(detail)))}
        )
    return out


def _read_source(path: Path, limit: int | None) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"Flickr8k split file not found: {path} (is --src the flickr8k folder?)")
    rows = []
    for _, row in read_jsonl(path, strict=False):
        rows.append(row)  # None: a line that is not JSON, counted as malformed by the caller
        if limit is not None and len(rows) >= limit:
            break
    return rows


def prepare_flickr8k(cfg: Flickr8kPrepConfig, progress: bool = False) -> dict:
    """Writes the stage-0/1/2 files for train and dev into ``cfg.out``; returns the summary dict."""
    t0 = time.perf_counter()
    acc = RecordAccounting(strict=cfg.strict)
    images = ImageChecker(decode=cfg.decode_images)
    cfg.out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for split in SPLITS:
        src_file = cfg.src / f"{split}.jsonl"
        rows = _read_source(src_file, cfg.limit)
        pairs, rounds, stage2 = [], [[] for _ in range(cfg.stage1_captions)], []
        where = str(src_file)
        iterator = rows
        if progress:
            from tqdm import tqdm

            iterator = tqdm(rows, desc=f"flickr8k {split}", unit="img")
        for i, row in enumerate(iterator):
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("captions"), list):
                acc.reject(RecordProblem(MALFORMED, f"line {i + 1} is not a {{image, captions}} object"), f"#{i}", where)
                continue
            key = Path(row["image"]).stem
            raw = [c for c in row["captions"] if isinstance(c, str) and c.strip()]
            if len(raw) < len(row["captions"]):
                acc.reject(RecordProblem(EMPTY_CAPTION, f"{len(row['captions']) - len(raw)} empty caption(s) dropped"), key, where)
            problem = check_pair({"image": row["image"], "captions": raw}, cfg.src, images=images)
            if problem:
                acc.reject(problem, key, where)
                continue
            captions = raw if cfg.raw_captions else [clean_caption(c) for c in raw]
            image = image_ref(cfg.src / row["image"], cfg.out, absolute=cfg.absolute_paths)
            pairs.append({"id": f"flickr8k-{key}", "image": image, "captions": captions})
            for k, record in enumerate(stage1_records(key, image, captions, cfg.seed, cfg.stage1_captions)):
                rounds[k].append(record)
            stage2.extend(stage2_records(key, image, captions, cfg.seed))
        stage1 = [r for rnd in rounds for r in rnd]
        name = f"flickr8k_stage0_{split}.json"  # pairs, checked as they were read
        acc.keep(name, write_records(cfg.out / name, pairs))
        files[f"stage0_{split}"] = str(cfg.out / name)
        for stage, records in (("stage1", stage1), ("stage2", stage2)):  # the checks the training loader applies
            files[f"{stage}_{split}"] = str(write_checked(cfg.out, f"flickr8k_{stage}_{split}.json", records, images, acc))
    summary = {
        "source": str(cfg.src),
        "out": str(cfg.out),
        "config": {"seed": cfg.seed, "limit": cfg.limit, "stage1_captions": cfg.stage1_captions,
                   "raw_captions": cfg.raw_captions, "absolute_paths": cfg.absolute_paths},
        "files": files,
        **acc.summary(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(cfg.out / "flickr8k_summary.json", summary)
    return summary
