"""Reading and writing record files, and the ``datasets`` loader for LLaVA conversation files.

Files are JSON arrays (``.json``, what LLaVA/TinyLLaVA read), written one record per line so they can
be grepped and diffed; ``.jsonl`` (one object per line) is read too. Image paths inside a file are
relative to the file's folder (or absolute); :func:`load_llava_dataset` resolves them.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from .records import (
    MALFORMED,
    BadRecordError,
    ImageChecker,
    RecordAccounting,
    RecordProblem,
    check_pair,
    check_record,
    record_images,
    resolve_path,
)

log = logging.getLogger(__name__)


def image_ref(image: str | os.PathLike, out_dir: str | os.PathLike, absolute: bool = False) -> str:
    """How an image is written into a file in ``out_dir``: relative to ``out_dir`` (default) or absolute."""
    image = Path(image).resolve()
    if absolute:
        return str(image)
    return os.path.relpath(image, Path(out_dir).resolve())


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Writes records as a JSON array, one record per line, atomically. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[")
        for record in records:
            f.write(",\n" if n else "\n")
            f.write(json.dumps(record, ensure_ascii=False))
            n += 1
        f.write("\n]\n")
    tmp.replace(path)
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_records(path: str | os.PathLike) -> list[Any]:
    """The raw records of a ``.json`` array or ``.jsonl`` file (a malformed JSONL line becomes ``None``).

    Raises :class:`FileNotFoundError` for a missing file and :class:`BadRecordError` for a file that is
    not JSON at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out: list[Any] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append(None)  # counted as malformed by the caller's checks
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRecordError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise BadRecordError(f"{path} must hold a JSON array of records, not a {type(data).__name__}")
    return data


def checked_records(
    path: str | os.PathLike,
    *,
    check_image: bool = True,
    decode_images: bool = False,
    accounting: RecordAccounting | None = None,
) -> Iterable[dict]:
    """Yields the good records of a LLaVA file; bad ones are counted in ``accounting`` (strict: raise)."""
    path = Path(path)
    root = path.parent
    accounting = accounting if accounting is not None else RecordAccounting()
    images = ImageChecker(decode=decode_images)
    for i, record in enumerate(load_records(path)):
        problem = (
            RecordProblem(MALFORMED, f"line {i + 1} is not valid JSON")
            if record is None
            else check_record(record, root, check_image=check_image, images=images)
        )
        rid = record.get("id", f"#{i}") if isinstance(record, dict) else f"#{i}"
        if problem:
            accounting.reject(problem, rid, where=str(path))
            continue
        accounting.keep(str(path))
        yield record


def load_llava_dataset(
    path: str | os.PathLike,
    *,
    check_image: bool = True,
    decode_images: bool = False,
    strict: bool = False,
    accounting: RecordAccounting | None = None,
):
    """Loads a LLaVA conversation file as a ``datasets.Dataset``.

    Columns: ``id`` (str), ``image`` (absolute path of the first image, or ``None`` for text-only records),
    ``images`` (all absolute image paths), ``conversations`` (list of ``{"from", "value"}``).
    Bad records are skipped and counted by reason in ``accounting`` (logged as a warning); with ``strict``
    the first one raises :class:`BadRecordError`.
    """
    from datasets import Dataset

    path = Path(path)
    root = path.parent.resolve()
    accounting = accounting if accounting is not None else RecordAccounting(strict=strict)
    rows = []
    for i, record in enumerate(
        checked_records(path, check_image=check_image, decode_images=decode_images, accounting=accounting)
    ):
        images = [os.path.abspath(resolve_path(p, root)) for p in record_images(record)]
        rows.append(
            {
                "id": str(record.get("id", f"{path.stem}-{i}")),
                "image": images[0] if images else None,
                "images": images,
                "conversations": [{"from": t["from"], "value": t["value"]} for t in record["conversations"]],
            }
        )
    if accounting.bad:
        log.warning("%s: skipped %d bad record(s): %s", path, sum(accounting.bad.values()), dict(accounting.bad))
    if not rows:
        features = _features()
        return Dataset.from_dict({k: [] for k in features}, features=features)
    return Dataset.from_list(rows, features=_features())


def load_pairs_dataset(
    path: str | os.PathLike,
    *,
    decode_images: bool = False,
    strict: bool = False,
    accounting: RecordAccounting | None = None,
):
    """Loads a stage-0 pairs file (``{"id", "image", "captions"}``) as a ``datasets.Dataset``.

    Columns: ``id``, ``image`` (absolute path), ``captions`` (list of str). Bad pairs are skipped and
    counted like :func:`load_llava_dataset` does.
    """
    from datasets import Dataset, Features, List, Value

    path = Path(path)
    root = path.parent.resolve()
    accounting = accounting if accounting is not None else RecordAccounting(strict=strict)
    images = ImageChecker(decode=decode_images)
    rows = []
    for i, pair in enumerate(load_records(path)):
        problem = check_pair(pair, root, images=images)
        if problem:
            accounting.reject(problem, pair.get("id", f"#{i}") if isinstance(pair, dict) else f"#{i}", str(path))
            continue
        accounting.keep(str(path))
        rows.append({"id": str(pair.get("id", f"{path.stem}-{i}")), "image": os.path.abspath(resolve_path(pair["image"], root)),
                     "captions": list(pair["captions"])})
    if accounting.bad:
        log.warning("%s: skipped %d bad pair(s): %s", path, sum(accounting.bad.values()), dict(accounting.bad))
    features = Features({"id": Value("string"), "image": Value("string"), "captions": List(Value("string"))})
    if not rows:
        return Dataset.from_dict({k: [] for k in features}, features=features)
    return Dataset.from_list(rows, features=features)


def _features():
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "image": Value("string"),
            "images": List(Value("string")),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
        }
    )
