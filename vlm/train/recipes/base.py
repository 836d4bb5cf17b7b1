"""Stage 1 recipe: train the projector only (LLaVA-1.5 feature alignment); saves a full llava folder."""
from __future__ import annotations

from pathlib import Path

from .common import freeze_all, load_start, projector_params, save_llava


def load(cfg, dtype):
    return load_start(cfg, dtype)


def prepare(model, cfg):
    freeze_all(model)
    for p in projector_params(model):
        p.requires_grad_(True)
    return model


def param_groups(model, cfg) -> list[dict]:
    return [{"params": projector_params(model), "lr": cfg.lr, "name": "projector"}]


def save(model, processor, out: Path, cfg) -> Path:
    return save_llava(model, processor, Path(out))
