"""Writing record files, and reading them back with bad records counted (:func:`checked_records`).

Files are JSON arrays (``.json``, what LLaVA/TinyLLaVA read), written one record per line so they can
be grepped and diffed; ``.jsonl`` (one object per line) is read too (:func:`vlm.records.load_records`).
Image paths inside a file are relative to the file's folder (or absolute).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from vlm.records import (
    MALFORMED,
    ImageChecker,
    RecordAccounting,
    RecordProblem,
    check_record,
    load_records,
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


def write_checked(out_dir: Path, name: str, records: Iterable[dict], images: ImageChecker,
                  accounting: RecordAccounting) -> Path:
    """Write ``out_dir/name`` with the records that pass the checks training applies (image paths relative
    to ``out_dir``); bad ones are counted in ``accounting`` under ``name``. Returns the file's path."""
    good = []
    for record in records:
        problem = check_record(record, out_dir, images=images)
        if problem:
            accounting.reject(problem, record["id"], name)
        else:
            good.append(record)
    accounting.keep(name, write_records(out_dir / name, good))
    return out_dir / name


def write_json(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
