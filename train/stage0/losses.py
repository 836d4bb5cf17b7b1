"""Stage-0 losses: feature distillation (cosine on standardised teacher features) and InfoNCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-channel standardisation along ``dim`` (teacher ReLU features are skewed and mostly small)."""
    shape = [1] * x.dim()
    shape[dim] = -1
    return (x - mean.view(shape)) / std.view(shape)


def cosine_distill(student: torch.Tensor, teacher: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean (1 - cosine) between matching vectors along ``dim``."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=dim)).mean()


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) unit vectors; ``logit_scale`` = 1/temperature."""
    logits = logit_scale * image_emb.float() @ text_emb.float().t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
