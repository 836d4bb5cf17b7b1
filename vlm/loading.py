"""Loading: model names and folders -> (llava model, processor). The one place that tells folder formats apart.

A name is looked up among the models shipped with vlm (``vlm/assets/<name>``); a folder is read by its
contents: ``adapter_config.json`` means an unmerged LoRA adapter, ``vlm_parts.json`` a parts folder
(projector + adapter, and the tower unless it is a registered one, over a registered base LLM), ``config.json`` with ``model_type: llava`` a
plain llava checkpoint. Nothing depends on how a folder is named. A model folder may carry its CLIP in
``clip/`` (:func:`vlm.clip.find_clip`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import adapters
from .compose import is_llava_folder, load_llava
from .errors import ModelNotFoundError

ASSETS = Path(__file__).parent / "assets"


def shipped_models() -> list[str]:
    return sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.is_dir() else []


def model_path(name_or_path: str | os.PathLike) -> Path:
    """The folder a shipped name stands for (an existing folder of that name wins), else the path itself."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir() and str(name_or_path) in shipped_models():
        path = ASSETS / str(name_or_path)
    return path


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype):
    """(llava model, processor) for a shipped name or a model folder of any format vlm writes."""
    tried = []
    path = model_path(name_or_path)
    tried.append(str(path))
    if path.is_dir():
        if adapters.is_adapter_folder(path):
            peft_model, processor = load_peft(path, dtype)
            return adapters.unwrap(peft_model).eval(), processor
        from .parts import is_parts_folder, load_parts

        if is_parts_folder(path):
            return load_parts(path, dtype, merge=True)  # shipped models: LoRA merged for inference speed
        if is_llava_folder(path):
            return load_llava(path, dtype)
        raise ModelNotFoundError(
            f"{path} is not a vlm model folder (no llava config.json, adapter_config.json or vlm_parts.json)"
        )
    shipped = ", ".join(shipped_models()) or "none yet"
    raise ModelNotFoundError(f"model {str(name_or_path)!r} not found (tried folder {tried[0]}; shipped models: {shipped})")



def load_peft(path: str | os.PathLike, dtype: torch.dtype = torch.float32, is_trainable: bool = False):
    """(PeftModel over the base llava, processor) for an adapter folder; the base is loaded by name or folder."""
    base = adapters.adapter_base(path)
    try:
        model, processor = load_model(base, dtype)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"base model of adapter {path} not found: {exc}") from None
    return adapters.attach(model, processor, path, is_trainable=is_trainable)


def load_merged(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(plain llava model with the adapter folder's LoRA merged in, processor)."""
    peft_model, processor = load_peft(path, dtype)
    return peft_model.merge_and_unload().eval(), processor
