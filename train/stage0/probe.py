"""Closed-form retrieval heads on frozen features: ridge maps from image features to the text space (the
teacher's linear-probe baseline, and an image head fitted on the student's clean features), and CCA, which
projects both sides into a shared space where they correlate most."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlm.eval.retrieval import TextSide, recall_at_k


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


# ------------------------------------------------------------------------------------------------- CCA
@dataclass
class CcaFit:
    """Both sides' maps into the shared space: ``(x - x_mean) @ x_proj`` and ``(y - y_mean) @ y_proj``.
    Each canonical direction is weighted by its correlation, so well-aligned directions count most."""

    x_mean: torch.Tensor  # (dx,)
    x_proj: torch.Tensor  # (dx, k)
    y_mean: torch.Tensor  # (dy,)
    y_proj: torch.Tensor  # (dy, k)
    correlations: torch.Tensor  # (k,)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize((x.float() - self.x_mean) @ self.x_proj, dim=-1)

    def texts(self, y: torch.Tensor) -> torch.Tensor:
        return F.normalize((y.float() - self.y_mean) @ self.y_proj, dim=-1)


def _moments(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n = len(x)
    return mx, my, xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n


class _Whitener:
    """``(C + reg * mean variance * I)^(-1/2)`` of a covariance ``C`` for any ``reg``, from one eigendecomposition
    (the text side of a bag of tokens has thousands of dimensions, and the search tries several ``reg``)."""

    def __init__(self, c: torch.Tensor):
        self.values, self.vectors = torch.linalg.eigh(c)
        self.scale = c.diagonal().mean()

    def __call__(self, reg: float) -> torch.Tensor:
        v = self.vectors
        return v @ torch.diag((self.values.clamp_min(0) + reg * self.scale).clamp_min(1e-12).rsqrt()) @ v.T


def _cca(mx, my, cxy, wx: torch.Tensor, wy: torch.Tensor, dims: int) -> CcaFit:
    u, s, vt = torch.linalg.svd(wx @ cxy @ wy)
    k = min(dims, len(s))
    a, b = wx @ u[:, :k] * s[:k], wy @ vt.T[:, :k] * s[:k]
    return CcaFit(mx.float(), a.float(), my.float(), b.float(), s[:k].float())


def cca_fit(x: torch.Tensor, y: torch.Tensor, reg_x: float, reg_y: float, dims: int) -> CcaFit:
    """Regularised CCA between paired rows of ``x`` (N, dx) and ``y`` (N, dy). ``reg_*`` adds that fraction
    of the mean variance to each covariance's diagonal; ``dims`` canonical directions are kept."""
    mx, my, cxx, cyy, cxy = _moments(x, y)
    return _cca(mx, my, cxy, _Whitener(cxx)(reg_x), _Whitener(cyy)(reg_y), dims)


def cca_probe(x_train: torch.Tensor, owner: list[int], train_unit: torch.Tensor, x_dev: torch.Tensor,
              dev_unit: torch.Tensor, dev_owner: list[int], regs_x=(1e-3, 1e-2, 1e-1), regs_y=(1e-3, 1e-2),
              dims=(64, 128, 192)):
    """CCA between each training caption and its image's features; the settings are chosen on dev t2i R@5.
    Returns (recalls with the settings, :class:`CcaFit`)."""
    mx, my, cxx, cyy, cxy = _moments(x_train[torch.as_tensor(owner)], train_unit)
    white_x, white_y = _Whitener(cxx), _Whitener(cyy)
    best, fit = None, None
    for rx in regs_x:
        wx = white_x(rx)
        for ry in regs_y:
            wy = white_y(ry)
            for k in dims:
                f = _cca(mx, my, cxy, wx, wy, k)
                r = recall_at_k(f.images(x_dev) @ f.texts(dev_unit).t(), dev_owner)
                r.update(reg_x=rx, reg_y=ry, dims=int(f.x_proj.shape[1]))
                if best is None or r["t2i_r5"] > best["t2i_r5"]:
                    best, fit = r, f
    return best, fit


def cca_as_linear(fit: CcaFit) -> dict[str, torch.Tensor]:
    """The image side of a CCA fit as an ``ImageHead`` state dict."""
    return {"proj.weight": fit.x_proj.t().contiguous(), "proj.bias": (-fit.x_mean @ fit.x_proj).contiguous()}


# ------------------------------------------------------------------------------------- choosing a head
@dataclass
class HeadFit:
    """A candidate retrieval head: its dev recalls, its ``ImageHead`` state (``None``: the head already in
    place), the text side that goes with it, and what it reads (see ``RetrievalSpec``)."""

    name: str
    recalls: dict
    state: dict[str, torch.Tensor] | None
    side: TextSide
    method: str = ""  # RetrievalSpec.head; default: the name
    image_features: str = "pooled"
    flip_average: bool = False

    def __post_init__(self):
        self.method = self.method or self.name


def closed_form_heads(x_train: torch.Tensor, owner: list[int], train_unit: torch.Tensor, x_dev: torch.Tensor,
                      dev_unit: torch.Tensor, dev_owner: list[int], side: TextSide, ridge: bool = True,
                      cca: bool = True) -> list[HeadFit]:
    """Ridge and/or CCA heads fitted on training features and caption units (of ``side``), scored on dev."""
    fits = []
    if ridge:
        targets = per_image_targets(train_unit, owner, len(x_train))
        r, fit = ridge_probe(x_train, targets, x_dev, dev_unit, dev_owner)
        fits.append(HeadFit("ridge", r, ridge_as_linear(*fit), side))
    if cca:
        r, fit = cca_probe(x_train, owner, train_unit, x_dev, dev_unit, dev_owner)
        fits.append(HeadFit("cca", r, cca_as_linear(fit), side.with_projection(fit.y_mean, fit.y_proj)))
    return fits


def best_head(fits: list[HeadFit]) -> HeadFit:
    """The highest dev text-to-image R@5; on a tie, the earlier candidate."""
    return max(fits, key=lambda f: f.recalls["t2i_r5"])
