"""Full fine-tuning: the whole LLM and the projector train (tower frozen); saves a plain llava folder.

LLaVA-1.5's full-tuning lr is 2e-5 (stage 2 defaults to LoRA's 2e-4: pass ``--lr 2e-5`` with ``--full``).
"""
from __future__ import annotations

from pathlib import Path

from .common import freeze_all, llava_of, load_start, projector_params, save_llava


def load(cfg, dtype):
    return load_start(cfg, dtype)


def _llm_params(model):
    llava = llava_of(model)
    seen, out = set(), []
    for p in list(llava.model.language_model.parameters()) + list(llava.lm_head.parameters()):
        if id(p) not in seen:  # tied embeddings appear twice
            seen.add(id(p))
            out.append(p)
    return out


def prepare(model, cfg):
    freeze_all(model)
    for p in _llm_params(model) + projector_params(model):
        p.requires_grad_(True)
    return model


def param_groups(model, cfg) -> list[dict]:
    plr = cfg.projector_lr if cfg.projector_lr is not None else cfg.lr
    return [
        {"params": _llm_params(model), "lr": cfg.lr, "name": "llm"},
        {"params": projector_params(model), "lr": plr, "name": "projector"},
    ]


def save(model, processor, out: Path, cfg) -> Path:
    return save_llava(model, processor, Path(out))
