"""Read an evaluation data file (JSONL): one record a line, image paths relative to the file's folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlm.records import read_jsonl


@dataclass
class Record:
    """One example. ``id`` is the record's ``id`` field, else its line number (1-based) in the file."""

    id: str
    image: Path | None
    data: dict = field(default_factory=dict)


def load_eval_records(path: str | Path, required: tuple[str, ...] = (), limit: int | None = None) -> list[Record]:
    """Records of a JSONL file, checked for the ``required`` keys; ``limit`` keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    records: list[Record] = []
    seen: set[str] = set()
    for lineno, data in read_jsonl(path):
        if not isinstance(data, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{path}:{lineno}: record has no {', '.join(repr(k) for k in missing)}")
        rid = str(data.get("id", lineno))
        if rid in seen:
            raise ValueError(f"{path}:{lineno}: duplicate id {rid!r}")
        seen.add(rid)
        image = data.get("image")
        image_path = None if image is None else (path.parent / str(image))
        records.append(Record(rid, image_path, data))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise ValueError(f"data file {path} has no records")
    return records
