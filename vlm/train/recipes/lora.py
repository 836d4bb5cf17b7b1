"""Stage 2 recipe: LoRA on every linear layer of the LLM (not ``lm_head``), plus the projector at its own lr.

Saves an unmerged adapter folder (see :mod:`vlm.adapters`): PEFT adapter files, the projector, the
processor, and a pointer to the base llava folder it was trained on.

Started from an adapter folder (``--model`` an earlier stage-2 output), it trains that adapter further:
same LoRA layers and rank, same base, and the adapter's own projector.
"""
from __future__ import annotations

from pathlib import Path

from vlm.adapters import adapter_base, is_adapter_folder

from .common import freeze_all, llm_linear_regex, load_start, projector_params, start_path


def lora_config(model, cfg):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules or llm_linear_regex(model),
        bias="none",
    )


def load(cfg, dtype):
    if is_adapter_folder(cfg.model):
        from vlm.loading import load_peft

        model, processor = load_peft(cfg.model, dtype, is_trainable=True)
        processor.tokenizer.padding_side = "right"
        return model, processor
    return load_start(cfg, dtype)


def prepare(model, cfg):
    from peft import get_peft_model

    if not hasattr(model, "peft_config"):  # a fresh adapter (an adapter folder loads with its own, trainable)
        freeze_all(model)
        model = get_peft_model(model, lora_config(model, cfg))
    for p in projector_params(model):
        p.requires_grad_(True)
    return model


def param_groups(model, cfg) -> list[dict]:
    proj = {id(p) for p in projector_params(model)}
    lora = [p for p in model.parameters() if p.requires_grad and id(p) not in proj]
    plr = cfg.projector_lr if cfg.projector_lr is not None else cfg.lr
    return [
        {"params": lora, "lr": cfg.lr, "name": "lora"},
        {"params": projector_params(model), "lr": plr, "name": "projector"},
    ]


def save(model, processor, out: Path, cfg) -> Path:
    from vlm.adapters import save_adapter_folder

    base = adapter_base(cfg.model) if is_adapter_folder(cfg.model) else start_path(cfg)
    return save_adapter_folder(model, processor, Path(out), base=base)
