"""Unmerged LoRA adapter folders (what stage 2 writes).

A folder holds the PEFT files (``adapter_config.json``, ``adapter_model.safetensors``), the projector it
was trained with (``projector.safetensors``), the processor files, and ``vlm_adapter.json`` naming the base
llava model (a folder, absolute or relative to the adapter folder, or a shipped name). Without
``vlm_adapter.json`` the base comes from ``adapter_config.json``'s ``base_model_name_or_path``.
The folder is recognised by its contents (``adapter_config.json``), never its name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from .errors import ModelNotFoundError

META = "vlm_adapter.json"
PROJECTOR = "projector.safetensors"


def _projector(llava):
    return llava.model.multi_modal_projector


def _llava(peft_model):
    return peft_model.base_model.model


def save_adapter_folder(peft_model, processor, out: str | os.PathLike, base: str) -> Path:
    """Write a stage-2 adapter folder for ``peft_model`` (a PEFT model over a llava model)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for cfg in peft_model.peft_config.values():
        cfg.base_model_name_or_path = base
    peft_model.save_pretrained(out, safe_serialization=True)
    proj = {k: v.detach().cpu().contiguous() for k, v in _projector(_llava(peft_model)).state_dict().items()}
    save_file(proj, out / PROJECTOR)
    processor.save_pretrained(out)
    (out / META).write_text(json.dumps({"base": base, "projector": PROJECTOR}, indent=2))
    return out


def _resolve_base(path: Path, base: str) -> str:
    candidate = Path(base).expanduser()
    if not candidate.is_absolute() and (path / candidate).is_dir():
        candidate = path / candidate
    if candidate.is_dir():
        if (candidate / "adapter_config.json").exists():
            raise ModelNotFoundError(f"adapter base {candidate} is itself an adapter folder; stacked adapters are not supported")
        return str(candidate.resolve())
    return base  # a shipped name; vlm.loading.load_model reports it if unknown


def is_adapter_folder(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The base llava model an adapter folder was trained on: a folder path or a shipped name."""
    path = Path(path)
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise ModelNotFoundError(f"{path} has no adapter_config.json")
    meta = json.loads((path / META).read_text()) if (path / META).exists() else {}
    base = meta.get("base") or json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{path}: the adapter does not say which base model it belongs to")
    return _resolve_base(path, base)


def peft_from_pretrained(model, path: Path, is_trainable: bool = False):
    """``PeftModel.from_pretrained``, without peft's call of a deprecated transformers method warning users
    on every load (``is_gradient_checkpointing``, peft 0.21 under transformers 5.2x)."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, path, is_trainable=is_trainable)


def attach(model, processor, path: str | os.PathLike, is_trainable: bool = False):
    """(PeftModel over ``model``, processor) with the adapter folder's LoRA weights, projector and processor
    files; ``model`` is the loaded base (see :func:`vlm.loading.load_peft`)."""
    path = Path(path)
    meta = json.loads((path / META).read_text()) if (path / META).exists() else {}
    peft_model = peft_from_pretrained(model, path, is_trainable=is_trainable)
    proj_file = path / meta.get("projector", PROJECTOR)
    if proj_file.exists():
        dtype = next(_projector(_llava(peft_model)).parameters()).dtype
        state = {k: v.to(dtype) for k, v in load_file(proj_file).items()}
        _projector(_llava(peft_model)).load_state_dict(state)
    if (path / "tokenizer_config.json").exists():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return peft_model, processor


def unwrap(peft_model):
    """The llava model inside a PEFT model (LoRA layers in place, unmerged)."""
    return _llava(peft_model)
