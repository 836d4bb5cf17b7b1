"""Swappable training recipes (after TinyLLaVA Factory): each module says what a stage loads, what it trains
and how it saves. ``base``: projector only (stage 1); ``lora`` / ``qlora``: LoRA on every LLM linear layer,
``qlora`` over a 4-bit NF4 LLM (bitsandbytes); ``full``: the whole LLM. The vision tower is always frozen.

Module interface: ``load(cfg, dtype) -> (model, processor)``, ``prepare(model, cfg) -> model``,
``param_groups(model, cfg) -> list[dict]``, ``save(model, processor, out, cfg) -> Path``.
"""
from __future__ import annotations

import importlib

RECIPES: dict[str, str] = {
    "base": "vlm.train.recipes.base",
    "lora": "vlm.train.recipes.lora",
    "qlora": "vlm.train.recipes.qlora",
    "full": "vlm.train.recipes.full",
}


def get_recipe(name: str):
    try:
        return importlib.import_module(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None
