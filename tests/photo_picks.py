"""Real Flickr8k dev photos picked by their captions (never by a model's scores): dogs away from water, and
beaches without dogs."""
from __future__ import annotations

import re

__all__ = ["dog_records", "beach_records"]

WATER = ("beach", "water", "sand", "ocean", "surf", "wave", "lake", "river", "pool", "sea")


def _says(caption: str, words) -> bool:
    return any(re.search(rf"\b{w}s?\b", caption.lower()) for w in words)


def dog_records(records: list[dict]) -> list[dict]:
    """Every caption mentions a dog; none mentions a beach or water."""
    return [r for r in records if all(_says(c, ["dog"]) for c in r["captions"])
            and not any(_says(c, WATER) for c in r["captions"])]


def beach_records(records: list[dict]) -> list[dict]:
    """At least 3 captions mention a beach; none mentions a dog."""
    return [r for r in records if sum(_says(c, ["beach"]) for c in r["captions"]) >= 3
            and not any(_says(c, ["dog", "puppy"]) for c in r["captions"])]
