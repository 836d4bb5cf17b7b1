"""Linear-probe baseline: a ridge map from frozen (teacher) image features to the text states."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def per_image_targets(text_unit: torch.Tensor, owner: list[int], n_images: int) -> torch.Tensor:
    """Mean of each image's caption unit vectors (N_images, D)."""
    out = torch.zeros(n_images, text_unit.shape[1])
    out.index_add_(0, torch.tensor(owner), text_unit)
    return F.normalize(out, dim=-1)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardise ``x`` and solve (X^T X + alpha I) W = X^T Y. Returns (W, x_mean, x_std)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
    a = xs.t() @ xs + alpha * torch.eye(xs.shape[1], dtype=xs.dtype)
    w = torch.linalg.solve(a, xs.t() @ y.double())
    return w.float(), mean.float(), std.float()


def ridge_apply(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    xs = (x.float() - mean) / std
    xs = torch.cat([xs, torch.ones(len(xs), 1)], 1)
    return F.normalize(xs @ w, dim=-1)
