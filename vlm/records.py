"""LLaVA conversation records, the data format of vlm: reading, checks and bad-record accounting.

A record is ``{"id": str, "image": str (optional; or a list of str), "conversations": [turn, ...]}``
with turns ``{"from": "human" | "gpt", "value": str}``: human first, strictly alternating, gpt last.
The human turns hold one ``<image>`` placeholder per image, and gpt turns hold none.
Relative image paths are relative to ``root`` (the folder of the JSON file holding the record).

:func:`read_jsonl` is the one JSONL reader (eval files and record files go through it);
:func:`load_records` reads a record file (``.json`` array or ``.jsonl``).
:func:`validate_record` returns the reason a record is bad (one of :data:`REASONS`) or ``None``;
:class:`RecordAccounting` counts bad records by reason during a long run, so that one bad record never
stops it, unless ``strict`` is set, in which case the first one raises :class:`BadRecordError`.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_TOKEN = "<image>"  # the placeholder in records and prompts (the processor expands it to image tokens)
ROLES = ("human", "gpt")

MALFORMED = "malformed"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOKEN_MISMATCH = "image_token_mismatch"
EMPTY_TURN = "empty_turn"
BAD_ROLE_ORDER = "bad_role_order"
EMPTY_CAPTION = "empty_caption"
REASONS = (MALFORMED, MISSING_IMAGE, UNREADABLE_IMAGE, IMAGE_TOKEN_MISMATCH, EMPTY_TURN, BAD_ROLE_ORDER, EMPTY_CAPTION)


class BadRecordError(ValueError):
    """A bad record met in ``--strict`` mode (or a record file that cannot be read at all)."""


@dataclass(frozen=True)
class RecordProblem:
    reason: str  # one of REASONS
    detail: str  # human-readable, names the problem

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def read_jsonl(path: str | os.PathLike, *, strict: bool = True, lines: int | None = None,
               missing: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (of its first ``lines`` lines when
    given). A line that is not JSON raises ``ValueError`` naming the file and line, or (``strict=False``)
    comes back as ``None``. A missing file raises ``FileNotFoundError`` (``missing``: a hint added to it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}{f' ({missing})' if missing else ''}")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if lines is not None and lineno > lines:
                return
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                if strict:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                yield lineno, None


def load_records(path: str | os.PathLike) -> list[Any]:
    """The raw records of a ``.json`` array or ``.jsonl`` file (a malformed JSONL line becomes ``None``).

    Raises :class:`FileNotFoundError` for a missing file and :class:`BadRecordError` for a file that is
    not JSON at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record file not found: {path}")
    if path.suffix == ".jsonl":
        return [obj for _, obj in read_jsonl(path, strict=False)]  # None: counted as malformed by the checks
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadRecordError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise BadRecordError(f"{path} must hold a JSON array of records, not a {type(data).__name__}")
    return data


def record_images(record: dict) -> list[str]:
    """The image paths of a record as given (``image`` may be absent, a string or a list of strings)."""
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        return [image]
    return list(image)


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """``path`` if absolute, else ``root / path`` (``root`` None means the current directory)."""
    p = Path(path)
    if p.is_absolute() or root is None:
        return p
    return Path(root) / p


class ImageChecker:
    """Checks that image files exist and (optionally) decode; remembers results per path."""

    def __init__(self, decode: bool = True) -> None:
        self.decode = decode
        self._seen: dict[Path, RecordProblem | None] = {}

    def __call__(self, path: Path) -> RecordProblem | None:
        if path in self._seen:
            return self._seen[path]
        problem = self._check(path)
        self._seen[path] = problem
        return problem

    def _check(self, path: Path) -> RecordProblem | None:
        if not path.is_file():
            return RecordProblem(MISSING_IMAGE, f"image file not found: {path}")
        if not self.decode:
            return None
        try:
            with Image.open(path) as img:
                img.load()
                if img.width < 1 or img.height < 1:
                    return RecordProblem(UNREADABLE_IMAGE, f"image has no pixels: {path}")
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
            return RecordProblem(UNREADABLE_IMAGE, f"cannot decode image {path}: {type(exc).__name__}: {exc}")
        return None


def _shape_problem(record: Any) -> RecordProblem | None:
    if not isinstance(record, dict):
        return RecordProblem(MALFORMED, f"record is a {type(record).__name__}, not an object")
    image = record.get("image")
    if image is not None and not (
        isinstance(image, str) or (isinstance(image, list) and all(isinstance(i, str) for i in image))
    ):
        return RecordProblem(MALFORMED, "'image' must be a path string or a list of path strings")
    if any(isinstance(i, str) and not i.strip() for i in record_images(record)):
        return RecordProblem(MISSING_IMAGE, "'image' is an empty path")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return RecordProblem(MALFORMED, "'conversations' is missing or not a list")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or "value" not in turn:
            return RecordProblem(MALFORMED, f"turn {i} is not an object with 'from' and 'value'")
        if turn["value"] is not None and not isinstance(turn["value"], str):
            return RecordProblem(MALFORMED, f"turn {i} 'value' is not a string")
    return None


def _conversation_problem(record: dict) -> RecordProblem | None:
    turns = record["conversations"]
    if len(turns) < 2:
        return RecordProblem(BAD_ROLE_ORDER, f"need at least one human turn and one gpt turn, got {len(turns)} turn(s)")
    roles = [t["from"] for t in turns]
    for i, role in enumerate(roles):
        expected = ROLES[i % 2]
        if role != expected:
            return RecordProblem(BAD_ROLE_ORDER, f"turn {i} is from {role!r}, expected {expected!r} (roles: {roles})")
    if len(turns) % 2:
        return RecordProblem(BAD_ROLE_ORDER, "the last turn is from 'human'; a record must end with a gpt turn")
    for i, turn in enumerate(turns):
        text = (turn["value"] or "").replace(IMAGE_TOKEN, "")
        if not text.strip():
            return RecordProblem(EMPTY_TURN, f"turn {i} ({turn['from']}) has no text")
    n_images = len(record_images(record))
    in_human = sum((t["value"] or "").count(IMAGE_TOKEN) for t in turns if t["from"] == "human")
    in_gpt = sum((t["value"] or "").count(IMAGE_TOKEN) for t in turns if t["from"] == "gpt")
    if in_gpt:
        return RecordProblem(IMAGE_TOKEN_MISMATCH, f"gpt turns hold {in_gpt} {IMAGE_TOKEN} placeholder(s)")
    if in_human != n_images:
        return RecordProblem(
            IMAGE_TOKEN_MISMATCH, f"{in_human} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s)"
        )
    return None


def check_record(
    record: Any,
    root: str | os.PathLike | None = None,
    *,
    check_image: bool = True,
    decode_image: bool = False,
    images: ImageChecker | None = None,
) -> RecordProblem | None:
    """What is wrong with a LLaVA record, or ``None``. Cheap checks first; image decoding only on request.

    ``root`` is the folder relative image paths are relative to. ``images`` (an :class:`ImageChecker`)
    caches image checks across records; when given, its own ``decode`` setting is used.
    """
    problem = _shape_problem(record) or _conversation_problem(record)
    if problem or not check_image:
        return problem
    checker = images or ImageChecker(decode=decode_image)
    for image in record_images(record):
        problem = checker(resolve_path(image, root))
        if problem:
            return problem
    return None


def validate_record(
    record: Any,
    root: str | os.PathLike | None = None,
    *,
    check_image: bool = True,
    decode_image: bool = False,
    images: ImageChecker | None = None,
) -> str | None:
    """The reason (one of :data:`REASONS`) a LLaVA record is bad, or ``None`` if it is fine.

    Fast by default: checks shape, roles, empty turns, ``<image>`` count and that image files exist;
    ``decode_image=True`` also decodes each image (cached per path when ``images`` is given).
    """
    problem = check_record(record, root, check_image=check_image, decode_image=decode_image, images=images)
    return problem.reason if problem else None


def check_pair(pair: Any, root: str | os.PathLike | None = None, *, images: ImageChecker | None = None) -> RecordProblem | None:
    """Checks a stage-0 pair ``{"id", "image", "captions": [str, ...]}``."""
    if not isinstance(pair, dict) or not isinstance(pair.get("image"), str) or not isinstance(pair.get("captions"), list):
        return RecordProblem(MALFORMED, "a pair needs 'image' (a path) and 'captions' (a list)")
    if not pair["captions"] or any(not isinstance(c, str) or not c.strip() for c in pair["captions"]):
        return RecordProblem(EMPTY_CAPTION, "a caption is empty or not a string")
    checker = images or ImageChecker(decode=False)
    return checker(resolve_path(pair["image"], root))


class RecordAccounting:
    """Counts records kept per output and bad records per reason; raises on the first bad one if ``strict``."""

    def __init__(self, strict: bool = False, max_examples: int = 5) -> None:
        self.strict = strict
        self.max_examples = max_examples
        self.kept: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def reject(self, problem: RecordProblem, record_id: str | None = None, where: str | None = None) -> None:
        """Counts one bad record (or raises :class:`BadRecordError` when strict)."""
        label = " ".join(x for x in (f"record {record_id!r}" if record_id is not None else "record",
                                     f"in {where}" if where else "") if x)
        if self.strict:
            raise BadRecordError(f"bad {label}: {problem} (--strict stops at the first bad record)")
        self.bad[problem.reason] += 1
        examples = self.examples.setdefault(problem.reason, [])
        if len(examples) < self.max_examples:
            examples.append(f"{label}: {problem.detail}")

    def keep(self, output: str, n: int = 1) -> None:
        self.kept[output] += n

    def summary(self) -> dict:
        return {
            "kept": dict(sorted(self.kept.items())),
            "bad": {reason: self.bad[reason] for reason in REASONS if self.bad[reason]},
            "bad_total": sum(self.bad.values()),
            "bad_examples": {k: v for k, v in self.examples.items()},
        }
