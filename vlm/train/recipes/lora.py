"""Stage 2 recipe: LoRA on every linear layer of the LLM (not ``lm_head``), plus the projector at its own lr.

Saves an unmerged adapter folder (see :mod:`vlm.adapters`): PEFT adapter files, the projector, the
processor, and a pointer to the base llava folder it was trained on.

Started from an adapter folder (``--model`` an earlier stage-2 output), it trains that adapter further:
same LoRA layers and rank, same base, and the adapter's own projector. Started from a parts folder (a shipped
model such as ``vlm-tiny``, or ``vlm export --format parts`` output), it trains the folder's adapter (a fresh
one if it has none) and its projector, and saves a parts folder over the same registered bases, keeping the
folder's CLIP (``clip/``), which stage 2 does not touch.
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


def _parts_start(cfg) -> Path | None:
    from vlm.loading import model_path
    from vlm.parts import is_parts_folder

    path = model_path(cfg.model)
    return path if is_parts_folder(path) else None


def load(cfg, dtype):
    if is_adapter_folder(cfg.model):
        from vlm.loading import load_peft

        model, processor = load_peft(cfg.model, dtype, is_trainable=True)
    elif (parts := _parts_start(cfg)) is not None:
        from vlm.parts import load_parts_peft

        model, processor = load_parts_peft(parts, dtype, is_trainable=True)
    else:
        return load_start(cfg, dtype)
    processor.tokenizer.padding_side = "right"
    return model, processor


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

    if (parts := _parts_start(cfg)) is not None:
        import shutil

        from vlm.parts import read_manifest, save_parts

        manifest = read_manifest(parts)
        saved = save_parts(model, processor, out, base_llm=manifest["base_llm"],
                           base_vocab_size=manifest["base_vocab_size"], base_vision=manifest.get("base_vision"))
        if (parts / "clip").is_dir() and not (saved / "clip").exists():
            shutil.copytree(parts / "clip", saved / "clip")
        return saved

    base = adapter_base(cfg.model) if is_adapter_folder(cfg.model) else start_path(cfg)
    return save_adapter_folder(model, processor, Path(out), base=base)
