"""The stage-0 student: a plain ``CLIPVisionModel`` plus small trainable heads used only in training
(spatial / pooled distillation heads) or for retrieval (the image head, exported with the tower)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel

from vlm.eval.retrieval import ImageHead


class Student(nn.Module):
    def __init__(self, tower_config, teacher_dim: int, text_dim: int, init_logit_scale: float = 10.0):
        super().__init__()
        self.tower = CLIPVisionModel(tower_config)
        hidden = tower_config.hidden_size
        self.spatial_head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, teacher_dim))
        self.pooled_head = nn.Linear(hidden, teacher_dim)
        self.image_head = ImageHead(hidden, text_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))

    @property
    def grid(self) -> int:
        cfg = self.tower.config
        return cfg.image_size // cfg.patch_size

    def encode(self, pixels: torch.Tensor):
        """(spatial (N, D, g, g) from layer -2 patch tokens, the tower's pooled output (N, hidden))."""
        out = self.tower(pixel_values=pixels, output_hidden_states=True)
        tokens = out.hidden_states[-2][:, 1:]  # what the LLaVA projector reads (CLS dropped)
        n, t, _ = tokens.shape
        return self.spatial_head(tokens).transpose(1, 2).reshape(n, -1, self.grid, self.grid), out.pooler_output

    def forward(self, pixels: torch.Tensor):
        """(spatial (N, D, g, g) from layer -2 patch tokens, pooled teacher-space (N, D), image emb (N, E))."""
        spatial, pooled = self.encode(pixels)
        return spatial, self.pooled_head(pooled), self.image_head(pooled)

    def logit_scale(self, max_scale: float) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=max_scale)


def match_grid(teacher_map: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize the teacher's map to the student's patch grid (identity when both are 7x7)."""
    if teacher_map.shape[-1] == grid:
        return teacher_map
    return F.adaptive_avg_pool2d(teacher_map, grid) if teacher_map.shape[-1] > grid else F.interpolate(
        teacher_map, size=(grid, grid), mode="bilinear", align_corners=False)
