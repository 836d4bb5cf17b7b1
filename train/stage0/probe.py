"""Ridge maps from image features to the text space: the teacher's linear-probe baseline, and the
closed-form image head fitted on the student's clean features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm.eval.retrieval import recall_at_k


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


def ridge_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_dev: torch.Tensor, dev_unit: torch.Tensor,
                dev_owner: list[int], alphas=(1.0, 10.0, 100.0, 1000.0, 3000.0)):
    """Ridge map from image features to per-image caption targets (fit on train, alpha chosen on dev t2i R@5).
    Returns (recalls with "alpha", (W, mean, std))."""
    best, fit = None, None
    for a in alphas:
        w, m, s = ridge_fit(x_train, y_train, a)
        r = recall_at_k(ridge_apply(x_dev, w, m, s) @ dev_unit.t(), dev_owner)
        r["alpha"] = a
        if best is None or r["t2i_r5"] > best["t2i_r5"]:
            best, fit = r, (w, m, s)
    return best, fit


def ridge_as_linear(w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fold standardisation + ridge weights (with a bias row) into an ``ImageHead`` state dict."""
    scaled = w[:-1] / std[:, None]
    return {"proj.weight": scaled.t().contiguous(), "proj.bias": (w[-1] - mean @ scaled).contiguous()}
