"""The two sides LiT trains, and the contrastive objective.

Contract: an image side maps ``(split, image indices, views)`` and a text side ``(split, caption indices)`` to
unnormalised embeddings of the same width; :class:`DualEncoder` holds both and ``logit_scale`` (log of the
inverse temperature, learned) and returns the symmetric InfoNCE loss of a batch. Only trainable parts are
submodules' parameters with ``requires_grad``; cached features and token ids are plain attributes (never
checkpointed). ``views`` is a (B,) tensor of view indices (0 plain, 1 mirrored), or ``None`` for the
average over the available views (evaluation's flip averaging; the projection is linear, so averaging
features equals averaging the projected embeddings). ``bf16`` autocasts a tower in training only: evaluation
runs in float32, as the saved model does.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CachedImages(nn.Module):
    """Locked tower: a linear projection of cached features; ``features[split]`` is a list of (N, F) views."""

    def __init__(self, proj: nn.Linear, features: dict[str, list[torch.Tensor]]):
        super().__init__()
        self.proj = proj
        self.__dict__["features"] = features

    def forward(self, split: str, idx: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.features[split]
        if views is None:
            x = torch.stack([f[idx] for f in feats]).mean(0)
        else:
            x = torch.stack(feats)[views.clamp_max(len(feats) - 1), idx]
        return self.proj(x.to(self.proj.weight.device, self.proj.weight.dtype))


class UnlockedImages(nn.Module):
    """Trained tower (LiT's "unlocked" setting): pixels of ``paths[split]`` through the tower each step."""

    def __init__(self, vision, proj: nn.Linear, paths: dict[str, Sequence[str]], preprocessing: dict, flip: bool,
                 bf16: bool = False):
        super().__init__()
        self.vision, self.proj, self.flip, self.bf16 = vision, proj, flip, bf16
        self.__dict__["paths"] = paths
        self.__dict__["prep"] = preprocessing

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=self.bf16 and self.training):
            pooled = self.vision(pixel_values=pixels).pooler_output
        return self.proj(pooled.float())

    def forward(self, split: str, idx: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        from .features import load_pixels

        device = self.proj.weight.device
        paths = [self.paths[split][i] for i in idx.tolist()]
        pixels = load_pixels(paths, self.vision.config.image_size, self.prep["image_mean"], self.prep["image_std"])
        pixels = pixels.to(device)
        if views is None:
            out = self._embed(pixels)
            return (out + self._embed(pixels.flip(-1))) / 2 if self.flip else out
        mirrored = views.to(device).bool().view(-1, 1, 1, 1)
        return self._embed(torch.where(mirrored, pixels.flip(-1), pixels))


class ClipText(nn.Module):
    """A ``CLIPTextModel`` (pooled at EOS) and its projection, on pre-tokenised captions ``ids[split]``."""

    def __init__(self, model, proj: nn.Linear, tokenizer, ids: dict[str, list[list[int]]], bf16: bool = False):
        super().__init__()
        self.model, self.proj, self.bf16 = model, proj, bf16
        self.__dict__["tokenizer"] = tokenizer
        self.__dict__["ids"] = ids

    def lengths(self, split: str) -> list[int]:
        return [len(x) for x in self.ids[split]]

    def forward(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        rows = [self.ids[split][i] for i in idx.tolist()]
        enc = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        device = self.proj.weight.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16 and self.training):
            out = self.model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
        return self.proj(out.pooler_output.float())


class FrozenStates(nn.Module):
    """Frozen text states (one vector per caption, standardised with the training captions' statistics)
    through a trained linear head."""

    def __init__(self, proj: nn.Linear, states: dict[str, torch.Tensor]):
        super().__init__()
        self.proj = proj
        mean, std = states["train"].mean(0), states["train"].std(0).clamp_min(1e-6)
        self.__dict__["states"] = {k: (v - mean) / std for k, v in states.items()}

    def lengths(self, split: str) -> None:
        return None  # one vector per caption: nothing to pad

    def forward(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(self.states[split][idx].to(self.proj.weight.device))


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
             image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over matching rows of unnormalised embeddings. With ``image_ids`` (the image of each
    row), an off-diagonal pair whose rows share an image is neither a positive nor a negative (masked)."""
    logits = logit_scale.exp() * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    if image_ids is not None:
        same = image_ids.view(-1, 1) == image_ids.view(1, -1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same.to(logits.device), -math.inf)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class DualEncoder(nn.Module):
    def __init__(self, image: nn.Module, text: nn.Module, logit_scale: nn.Parameter, max_logit_scale: float):
        super().__init__()
        self.image, self.text, self.logit_scale = image, text, logit_scale
        self.max_logit_scale = max_logit_scale

    def forward(self, split: str, captions: torch.Tensor, owner: torch.Tensor, views: torch.Tensor | None = None):
        images = owner[captions]
        return info_nce(self.image(split, images, views), self.text(split, captions), self.logit_scale, images)

    @torch.no_grad()
    def clamp_(self) -> None:
        """CLIP's cap on the inverse temperature (after each optimizer step)."""
        self.logit_scale.clamp_(max=self.max_logit_scale)

    @torch.no_grad()
    def embed(self, split: str, n_images: int, n_captions: int, batch_size: int = 512):
        """Unit image embeddings (flip-averaged when there are two views) and unit caption embeddings."""
        was = self.training
        self.eval()
        try:
            img = torch.cat([self.image(split, torch.arange(s, min(s + batch_size, n_images)))
                             for s in range(0, n_images, batch_size)])
            txt = torch.cat([self.text(split, torch.arange(s, min(s + batch_size, n_captions)))
                             for s in range(0, n_captions, batch_size)])
        finally:
            self.train(was)
        return F.normalize(img.float().cpu(), dim=-1), F.normalize(txt.float().cpu(), dim=-1)
