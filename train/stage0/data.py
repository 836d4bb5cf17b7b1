"""Flickr8k for stage 0: records, decoded image tensors, and batched GPU-free augmentation.

Images are kept in memory as uint8 (N, 3, 224, 224) (6,000 train images = 0.9 GB). Augmentation works on a
whole batch at once with one affine grid per image (random resized crop + horizontal flip), so the same
grid can warp the teacher's cached 7x7 feature map to the crop (see :func:`warp_maps`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 224


@dataclass
class Split:
    images: list[str]  # absolute image paths
    captions: list[list[str]]  # 5 per image

    def __len__(self) -> int:
        return len(self.images)

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """All captions in order, and the image index of each."""
        texts, owner = [], []
        for i, caps in enumerate(self.captions):
            texts.extend(caps)
            owner.extend([i] * len(caps))
        return texts, owner


def load_split(data_dir: str | Path, split: str, limit: int | None = None) -> Split:
    """Read ``<data_dir>/<split>.jsonl`` (Flickr8k format: image path + captions)."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {split}.jsonl in {data_dir}")
    images, captions = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        images.append(str(data_dir / rec["image"]))
        captions.append(list(rec["captions"]))
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"{path} has no records")
    return Split(images, captions)


def load_pixels(paths: list[str], size: int = SIZE) -> torch.Tensor:
    """Decode images to a uint8 tensor (N, 3, size, size) (resized with bicubic if not already that size)."""
    from PIL import Image

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out


@dataclass
class AugmentConfig:
    min_scale: float = 0.35  # random resized crop: area fraction range
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale: float = 0.1


def random_grids(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) affine thetas for ``F.affine_grid``: a random crop box (and flip) in normalised coords."""
    area = torch.empty(n).uniform_(cfg.min_scale, cfg.max_scale, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=generator) < cfg.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def identity_grids(n: int) -> torch.Tensor:
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    return theta


def warp(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Crop/flip float images (N, C, H, W) with ``theta`` to (N, C, size, size) (bilinear)."""
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def warp_maps(maps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The same crop/flip applied to feature maps (N, C, h, w), keeping their size."""
    return warp(maps, theta, maps.shape[-1])


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness / contrast / saturation jitter and random grayscale on RGB in [0, 1]."""
    n = x.shape[0]

    def factor(amount: float) -> torch.Tensor:
        return (1 + torch.empty(n, 1, 1, 1).uniform_(-amount, amount, generator=generator)).to(x.dtype)

    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    if cfg.brightness:
        x = x * factor(cfg.brightness)
    if cfg.contrast:
        x = (x - gray.mean((2, 3), keepdim=True)) * factor(cfg.contrast) + gray.mean((2, 3), keepdim=True)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    if cfg.saturation:
        x = (x - gray) * factor(cfg.saturation) + gray
    if cfg.grayscale:
        g = (torch.rand(n, 1, 1, 1, generator=generator) < cfg.grayscale).to(x.dtype)
        x = x * (1 - g) + gray.expand_as(x) * g
    return x.clamp(0, 1)


def to_student(x224: torch.Tensor, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """RGB [0, 1] at 224 -> the student's normalised input (bicubic, antialiased resize like PIL)."""
    if x224.shape[-1] != size:
        x224 = F.interpolate(x224, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x224.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x224.dtype).view(1, 3, 1, 1)
    return (x224.clamp(0, 1) - m) / s
