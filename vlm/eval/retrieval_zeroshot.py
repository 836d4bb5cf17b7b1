"""Zero-shot classification check for a CLIP: does it pick the right one of 10 labels derived from captions?

How the labelled set is built (from the evaluated records' own captions, so no labels are invented):
an image gets label L when at least ``min_agree`` (3) of its captions mention one of L's words (whole words,
lower-cased; the word lists are in :data:`LABELS`) and every other label is mentioned by at most
``max_other`` (1) of its captions; other images are left out (no label, or two labels that compete, such as
a dog in the snow). On Flickr8k dev this labels 344 of 1,000 images (dog 102, water 64, bike 42, ball 28,
snow 26, skateboard 23, beach 18, street 16, rock 13, grass 12). The labels are the ten frequent, visually
distinct nouns of dev captions that keep at least 10 images under this rule.

The CLIP scores each image against one prompt per label (its phrase, e.g. "a dog"), and the top-scoring
label is its answer. Reported: top-1 accuracy, the mean of per-label accuracies (balanced: the classes are
uneven), random chance (1/10) and the majority-label baseline (always answering the most frequent label).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import torch

# label -> (prompt, words that count as a mention)
LABELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dog": ("a dog", ("dog", "dogs", "puppy", "puppies")),
    "water": ("water", ("water", "pool", "lake", "river")),
    "bike": ("a bike", ("bike", "bikes", "bicycle", "bicycles", "biker", "bikers", "cyclist")),
    "ball": ("a ball", ("ball", "football", "soccer")),
    "skateboard": ("a skateboard", ("skateboard", "skateboarder", "skateboarding", "skateboards")),
    "snow": ("snow", ("snow", "snowy")),
    "beach": ("a beach", ("beach",)),
    "grass": ("grass", ("grass", "grassy", "field")),
    "rock": ("rocks", ("rock", "rocks", "cliff")),
    "street": ("a street", ("street", "road", "city")),
}


def mentions(captions: Sequence[str], labels: dict = LABELS) -> dict[str, int]:
    """For each label, how many of ``captions`` mention it."""
    words = [set(re.findall(r"[a-z]+", c.lower())) for c in captions]
    return {name: sum(bool(w & set(vocab)) for w in words) for name, (_, vocab) in labels.items()}


def label_of(captions: Sequence[str], min_agree: int = 3, max_other: int = 1, labels: dict = LABELS) -> str | None:
    """The label the captions agree on (see the module docstring), or None."""
    counts = mentions(captions, labels)
    agreed = [name for name, n in counts.items() if n >= min_agree]
    if len(agreed) != 1:
        return None
    (name,) = agreed
    return name if all(n <= max_other for other, n in counts.items() if other != name) else None


def labelled(caption_lists: Sequence[Sequence[str]], **kwargs) -> list[tuple[int, str]]:
    """(record index, label) of every record whose captions agree on one label."""
    out = []
    for i, caps in enumerate(caption_lists):
        name = label_of(caps, **kwargs)
        if name is not None:
            out.append((i, name))
    return out


def score(image_vectors: torch.Tensor, prompt_vectors: torch.Tensor, truth: Sequence[str],
          names: Sequence[str]) -> dict:
    """Top-1 of unit image vectors against unit prompt vectors (one per ``names`` entry), with baselines."""
    if not len(truth):
        raise ValueError("no labelled images to score")
    index = {n: j for j, n in enumerate(names)}
    target = torch.tensor([index[t] for t in truth])
    guess = (image_vectors.float() @ prompt_vectors.float().T).argmax(1)
    hit = guess == target
    per_label = {n: round(float(hit[target == j].float().mean()), 4) for j, n in enumerate(names)
                 if (target == j).any()}
    counts = Counter(truth)
    return {"top1": round(float(hit.float().mean()), 4),
            "balanced_top1": round(sum(per_label.values()) / len(per_label), 4),
            "chance_top1": round(1 / len(names), 4),
            "majority_top1": round(counts.most_common(1)[0][1] / len(truth), 4),
            "images": len(truth), "labels": {n: counts[n] for n in names}, "per_label_top1": per_label}
