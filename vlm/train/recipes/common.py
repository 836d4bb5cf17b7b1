"""Pieces shared by the recipes: loading the starting model, freezing, finding the LLM's linear layers."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def llava_of(model):
    """The ``LlavaForConditionalGeneration`` inside a PEFT wrapper (or the model itself)."""
    from transformers import LlavaForConditionalGeneration

    inner = model
    for _ in range(4):  # PeftModel -> LoraModel -> llava; DDP/accelerate wrappers -> .module
        if isinstance(inner, LlavaForConditionalGeneration):
            return inner
        inner = inner.module if hasattr(inner, "module") else inner.base_model.model if hasattr(inner, "base_model") else inner.model
    raise TypeError(f"no llava model inside {type(model).__name__}")


def load_start(cfg, dtype: torch.dtype):
    """Stage 1 with ``--vision``: compose a tower and an LLM. Otherwise load a llava folder or shipped name."""
    if cfg.vision:
        from vlm import compose
        from vlm.config import TowerPreset

        vision = TowerPreset().to_config() if cfg.vision == "preset" else cfg.vision
        torch.manual_seed(cfg.seed)  # the fresh projector (and a fresh tower) start from the run's seed
        layer = compose.DEFAULT_FEATURE_LAYER if cfg.vision_feature_layer is None else cfg.vision_feature_layer
        return compose.build(vision, cfg.model, dtype, cfg.image_size, layer)
    from vlm.loading import load_model

    model, processor = load_model(cfg.model, dtype)
    if hasattr(model, "peft_config") or any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError(f"{cfg.model} holds an unmerged adapter; export it first (vlm export) or train from its base")
    processor.tokenizer.padding_side = "right"
    return model, processor


def freeze_all(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def projector_params(model) -> list[nn.Parameter]:
    return list(llava_of(model).model.multi_modal_projector.parameters())


def llm_linear_regex(model) -> str:
    """A PEFT ``target_modules`` regex for every ``nn.Linear`` in the LLM (``lm_head``, tower, projector excluded)."""
    llava = llava_of(model)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in llava.model.language_model.named_modules()
                     if isinstance(m, nn.Linear) and name})
    if not leaves:
        raise ValueError("the LLM has no linear layers to put LoRA on")
    return r"model\.language_model\.(?:.*\.)?(?:" + "|".join(leaves) + ")"


def save_llava(model, processor, out: Path) -> Path:
    """A plain HF llava folder (safetensors) that stock transformers loads."""
    out.mkdir(parents=True, exist_ok=True)
    llava = llava_of(model)
    llava.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def start_path(cfg) -> str:
    """The starting model as an absolute path when it is a folder (for adapter folders to point at)."""
    p = Path(cfg.model).expanduser()
    return str(p.resolve()) if p.is_dir() else cfg.model
