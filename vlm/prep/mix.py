"""Mix LLaVA record files into one training file: ``PATH[:N]`` takes N records sampled from PATH
(all when N is omitted), image paths are rewritten for the output's folder, and the result is shuffled
with a seed. This is how LLaVA-style data mixtures (captions + instructions + documents) are built.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from vlm.records import load_records

from .io import image_ref, write_records


@dataclass
class MixSource:
    path: Path
    count: int | None = None  # None = every record

    @classmethod
    def parse(cls, spec: str) -> "MixSource":
        path, sep, count = spec.rpartition(":")
        if not sep or not count.isdigit():
            return cls(Path(spec))
        return cls(Path(path), int(count))


@dataclass
class MixConfig:
    sources: list[MixSource]
    out: Path
    seed: int = 0
    absolute_paths: bool = False
    counts: dict = field(default_factory=dict)


def mix(cfg: MixConfig) -> dict:
    rng = random.Random(cfg.seed)
    mixed = []
    for src in cfg.sources:
        records = [r for r in load_records(src.path) if isinstance(r, dict)]
        if src.count is not None:
            if src.count > len(records):
                raise ValueError(f"{src.path} has {len(records)} records; {src.count} were asked for")
            records = rng.sample(records, src.count)
        for record in records:
            if record.get("image"):
                record["image"] = image_ref(src.path.parent / record["image"], cfg.out.parent, cfg.absolute_paths)
        mixed.extend(records)
        cfg.counts[str(src.path)] = len(records)
    rng.shuffle(mixed)
    total = write_records(cfg.out, mixed)
    return {"out": str(cfg.out), "records": total, "sources": cfg.counts, "seed": cfg.seed}
