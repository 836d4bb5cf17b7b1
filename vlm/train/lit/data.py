"""Image-caption pairs for LiT and their batch order.

Contract: :func:`load_pairs` reads a Flickr8k-style JSONL file (``{"image", "captions": [...]}``, image paths
relative to the file) into one flat list of captions, each with the index of its image. :func:`epoch_order`
is a permutation of all captions that depends only on ``(seed, epoch)``, so a resumed run replays the same
batches; :func:`batches` cuts it into full batches (the last partial one is dropped: InfoNCE wants the same
number of negatives every step). With ``lengths``, captions are grouped by length within windows of
``GROUP_WINDOW`` batches of the shuffled order and the batches are shuffled again, so a batch holds captions
of similar length (less padding; a padded position costs as much as a real one) drawn from all over the
data. Two captions of one image can share a batch; the loss masks that pair.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from vlm.records import read_jsonl


@dataclass
class Pairs:
    images: list[str]  # image file paths
    captions: list[str]  # every caption of every image, in file order
    owner: list[int]  # the image index of each caption

    def __len__(self) -> int:
        return len(self.captions)


def load_pairs(path: str | Path, limit: int | None = None) -> Pairs:
    """Pairs of a JSONL file; ``limit`` keeps the first N images."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    images, captions, owner = [], [], []
    for i, (lineno, row) in enumerate(itertools.islice(read_jsonl(path), limit)):
        if not isinstance(row, dict) or "image" not in row or "captions" not in row:
            raise ValueError(f"{path}:{lineno}: expected an object with 'image' and 'captions'")
        caps = [str(c) for c in row["captions"] if str(c).strip()]
        if not caps:
            raise ValueError(f"{path}: record {row.get('id', lineno)} has no captions")
        images.append(str(path.parent / str(row["image"])))
        captions.extend(caps)
        owner.extend([i] * len(caps))
    return Pairs(images, captions, owner)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


GROUP_WINDOW = 32


def batches(n: int, batch_size: int, seed: int, epoch: int,
            lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The caption-index batches of one epoch (``n // batch_size`` of them; at least one if ``n >= 2``)."""
    if n < 2:
        raise ValueError(f"need at least 2 captions to train, got {n}")
    size = min(batch_size, n)
    order = epoch_order(n, seed, epoch)[: n - n % size]
    if lengths is None:
        return list(order.split(size))
    if len(lengths) != n:
        raise ValueError(f"lengths has {len(lengths)} entries for {n} captions")
    length = torch.as_tensor(lengths)
    window = size * GROUP_WINDOW
    grouped = torch.cat([w[length[w].argsort(stable=True)] for w in order.split(window)])
    out = list(grouped.split(size))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009)
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]
