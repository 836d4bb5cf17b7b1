"""Captioning baseline: nearest-neighbour captions from the training set (Devlin et al. 2015, simplified).

For each evaluated image: embed it with the *model's own* vision tower (the tower's pooled output, i.e.
the post-layernorm CLS state, L2-normalised), find the ``k`` training images with the highest cosine
similarity, and return the **consensus caption** among their captions: the one with the highest mean
word-overlap F1 (over :func:`~vlm.eval.text_norm.simple_caption_tokens` tokens, unigrams, counted with
multiplicity) against all the other captions in that pool, ties to the earliest. With ``k=1`` (default)
this is the most typical of the nearest training image's 5 captions.

A tower that has learnt nothing still gives a meaningful floor: near-duplicate colours/layouts retrieve
captions of similar scenes, and the consensus rule alone already picks a fluent, generic caption.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..records import Record
from ..text_norm import simple_caption_tokens


def _overlap_f1(a: Counter, b: Counter) -> float:
    common = sum((a & b).values())
    if not common:
        return 0.0
    p, r = common / sum(a.values()), common / sum(b.values())
    return 2 * p * r / (p + r)


def consensus_caption(captions: Sequence[str]) -> str:
    """The caption that agrees most (mean unigram F1) with the others; the only one if there is one."""
    if not captions:
        raise ValueError("no captions to choose from")
    bags = [Counter(simple_caption_tokens(c).split()) for c in captions]
    if len(captions) == 1:
        return captions[0]
    best, best_score = 0, -1.0
    for i, bag in enumerate(bags):
        s = sum(_overlap_f1(bag, other) for j, other in enumerate(bags) if j != i) / (len(bags) - 1)
        if s > best_score:
            best, best_score = i, s
    return captions[best]


class TowerEmbedder:
    """Pooled, L2-normalised features of a vlm model's vision tower, preprocessed by its own processor."""

    def __init__(self, vlm, batch_size: int = 64):
        self.tower = vlm.model.model.vision_tower
        self.image_processor = vlm.processor.image_processor
        self.batch_size = batch_size

    def __call__(self, images: Sequence) -> "torch.Tensor":  # noqa: F821
        import torch
        import torch.nn.functional as F

        from vlm.images import load_image

        dtype = next(self.tower.parameters()).dtype
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pil = [load_image(im) for im in images[start:start + self.batch_size]]
                pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"].to(dtype)
                pooled = self.tower(pixel_values=pixels).pooler_output
                chunks.append(F.normalize(pooled.float(), dim=-1))
        return torch.cat(chunks)


class NearestNeighbourCaptioner:
    """Caption = consensus caption of the ``k`` training images closest in tower-feature space."""

    def __init__(self, embed, train: Sequence[Record], k: int = 1, progress: bool = False):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not train:
            raise ValueError("nearest-neighbour captioning needs training records")
        self.embed, self.train, self.k = embed, list(train), min(k, len(train))
        self.progress = progress
        self._features = None

    @property
    def features(self):
        if self._features is None:  # computed on first use, so a fully resumed run never pays for it
            import torch

            from tqdm.auto import tqdm

            step = 256
            parts = []
            for s in tqdm(range(0, len(self.train), step), desc="nn: embed train", disable=not self.progress,
                          leave=False):
                parts.append(self.embed([r.image for r in self.train[s:s + step]]))
            self._features = torch.cat(parts)
        return self._features

    def neighbours(self, images: Sequence) -> list[list[int]]:
        q = self.embed(list(images))
        sims = q @ self.features.T
        return sims.topk(self.k, dim=1).indices.tolist()

    def __call__(self, batch: Sequence[Record]) -> list[str]:
        out = []
        for rec, idx in zip(batch, self.neighbours([r.image for r in batch])):
            pool = [c for i in idx for c in self.train[i].data["captions"]]
            out.append(consensus_caption(pool))
        return out
