"""The compact "parts" format used to ship small models such as ``vlm-tiny``.

Only what training changed is stored, all weights bf16 safetensors::

    vlm_parts.json            {"format": 2, "base_llm": "smollm2-135m-instruct", ...}
    vision/                   the vision tower (config.json + model.safetensors), unless it is a registered one
    projector.safetensors     the MLP projector
    adapter/                  PEFT LoRA adapter over the llava model (absent if none)
    embeddings.safetensors    embedding rows added for <image> (absent if the vocab was not grown)
    processor/                LlavaProcessor files (tokenizer, chat template, image processor)
    clip/                     the model's CLIP for retrieval in compact form (:mod:`vlm.clip_parts`, its own dtype;
                              optional: ``vlm export --format clip-parts --out PARTS/clip``; ``vlm eval retrieval``)

A registered (fetched) tower is not stored: the manifest names it (``"base_vision": "dinov2-vits14"``)
with the input size it runs at (``"vision_image_size"``), and loading fetches it through :mod:`vlm.registry`
like the base LLM. Saving checks that the model's tower still equals the registered one at that size.
Format 1 folders (tower always stored) load unchanged.

Loading takes the base LLM from :mod:`vlm.registry` (a registered name, or a folder), composes it with the
tower, restores the added rows, the projector and the adapter, and optionally merges the LoRA.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ModelNotFoundError

MANIFEST = "vlm_parts.json"
FORMAT = 2
READABLE = (1, 2)  # 1: the tower is always stored in vision/
SAVE_DTYPE = torch.bfloat16


def _bf16(state: dict) -> dict:
    return {k: v.detach().to("cpu", SAVE_DTYPE).contiguous() for k, v in state.items()}


def _check_registered_tower(tower, base_vision: str) -> None:
    """The tower must equal the registered one at the tower's input size (compared in the parts' bf16)."""
    from . import registry
    from .vision import load_vision

    if base_vision not in registry.VISION_REGISTRY:
        known = ", ".join(sorted(registry.VISION_REGISTRY))
        raise ValueError(f"base_vision {base_vision!r} is not a registered tower (registered: {known})")
    reference, _ = load_vision(base_vision, torch.float32, tower.config.image_size)
    ours = tower.state_dict()
    for name, tensor in reference.state_dict().items():
        mine = ours.get(name)
        if mine is None or mine.shape != tensor.shape or not torch.equal(mine.to(SAVE_DTYPE), tensor.to(SAVE_DTYPE)):
            raise ValueError(f"the model's vision tower differs from the registered {base_vision!r} at {name}; "
                             "store it (base_vision=None) or ship a llava folder")


def save_parts(model, processor, out: str | os.PathLike, base_llm: str, base_vocab_size: int,
               base_vision: str | None = None) -> Path:
    """Write ``model`` as parts over ``base_llm`` (and ``base_vision``, a registered tower name, if given).

    ``model``: a llava model, or a PEFT model over one (its LoRA weights go to ``adapter/``).
    ``base_vocab_size``: the base LLM's vocabulary size; rows from there on are stored.
    The LLM's own weights are not stored: they must equal the base LLM's (true for stages 1 and 2 with
    LoRA; a ``--full`` run must ship as a plain llava folder instead). With ``base_vision`` the tower is not
    stored either; it must equal the registered tower at the model's input size (checked here).
    """
    from transformers import LlavaForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_model = None if isinstance(model, LlavaForConditionalGeneration) else model
    llava = model if peft_model is None else peft_model.base_model.model
    inner = llava.model

    tower = inner.vision_tower
    if base_vision is None:
        tower.save_pretrained(out / "vision", state_dict=_bf16(tower.state_dict()), safe_serialization=True)
    else:
        _check_registered_tower(tower, base_vision)
    save_file(_bf16(inner.multi_modal_projector.state_dict()), out / "projector.safetensors")

    files = {"vision": "vision" if base_vision is None else None, "projector": "projector.safetensors",
             "adapter": None, "embeddings": None}
    emb = llava.get_input_embeddings().weight
    if emb.shape[0] > base_vocab_size:
        rows = {"input": emb[base_vocab_size:]}
        head = llava.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            rows["output"] = head.weight[base_vocab_size:]
        save_file(_bf16(rows), out / "embeddings.safetensors")
        files["embeddings"] = "embeddings.safetensors"

    if peft_model is not None:
        from peft import get_peft_model_state_dict

        adapter_dir = out / "adapter"
        adapter_dir.mkdir(exist_ok=True)
        name = peft_model.active_adapter
        config = peft_model.peft_config[name]
        state = {k: v for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items() if "lora_" in k}
        save_file(_bf16(state), adapter_dir / "adapter_model.safetensors")
        cfg = config.to_dict()
        cfg["base_model_name_or_path"] = None
        cfg["modules_to_save"] = None
        cfg["inference_mode"] = True  # a shipped adapter; training again loads it trainable explicitly
        for key, value in list(cfg.items()):
            if isinstance(value, set):
                cfg[key] = sorted(value)
        (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2, default=str))
        files["adapter"] = "adapter"

    processor.save_pretrained(out / "processor")
    cfg = llava.config
    manifest = {
        "format": FORMAT,
        "base_llm": str(base_llm),
        "base_vocab_size": int(base_vocab_size),
        "base_vision": base_vision,
        "vision_image_size": int(tower.config.image_size),
        "image_token_id": int(cfg.image_token_id),
        "image_seq_length": int(cfg.image_seq_length),
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "projector_hidden_act": cfg.projector_hidden_act,
        "dtype": str(SAVE_DTYPE).replace("torch.", ""),
        **files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def is_parts_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{path} is not a readable parts folder: {exc}") from None
    if manifest.get("format") not in READABLE:
        raise ModelNotFoundError(f"{path}: unsupported parts format {manifest.get('format')!r} (readable: {READABLE})")
    return manifest


def load_parts(path: str | os.PathLike, dtype: torch.dtype = torch.float32, merge: bool = False):
    """(llava model, processor) from a parts folder; the LoRA stays unmerged unless ``merge``."""
    peft_model, processor = load_parts_peft(path, dtype)
    if not hasattr(peft_model, "peft_config"):
        return peft_model.eval(), processor
    model = peft_model.merge_and_unload() if merge else peft_model.base_model.model
    return model.eval(), processor


def load_parts_peft(path: str | os.PathLike, dtype: torch.dtype = torch.float32, is_trainable: bool = False):
    """(PEFT model over the composed llava, processor) from a parts folder: the adapter unmerged, trainable if
    asked (stage 2 continuing a shipped model). A folder without an adapter gives the plain llava model."""
    from transformers import AutoProcessor

    from . import compose
    from .vision import load_vision

    path = Path(path)
    manifest = read_manifest(path)
    processor = AutoProcessor.from_pretrained(path / "processor")
    llm, _ = compose.load_llm(manifest["base_llm"], dtype)
    if llm.get_input_embeddings().weight.shape[0] != manifest["base_vocab_size"]:
        raise ModelNotFoundError(
            f"{path}: base LLM {manifest['base_llm']!r} has {llm.get_input_embeddings().weight.shape[0]} "
            f"embedding rows, the parts expect {manifest['base_vocab_size']}"
        )
    if manifest.get("base_vision"):
        tower, _ = load_vision(manifest["base_vision"], dtype, manifest["vision_image_size"])
    else:
        tower, _ = load_vision(path / manifest["vision"], dtype)
    model, _ = compose.compose(tower, llm, processor.tokenizer, vision_feature_layer=manifest["vision_feature_layer"])
    cfg = model.config
    if cfg.image_token_id != manifest["image_token_id"]:
        raise ModelNotFoundError(f"{path}: <image> token id {cfg.image_token_id} != {manifest['image_token_id']}")
    cfg.vision_feature_select_strategy = manifest["vision_feature_select_strategy"]
    if cfg.image_seq_length != manifest["image_seq_length"]:
        raise ModelNotFoundError(f"{path}: the tower gives {cfg.image_seq_length} image tokens, the parts were "
                                 f"saved with {manifest['image_seq_length']}")

    with torch.no_grad():
        if manifest.get("embeddings"):
            rows = load_file(path / manifest["embeddings"])
            base = manifest["base_vocab_size"]
            emb = model.get_input_embeddings().weight
            emb[base:] = rows["input"].to(emb.dtype)
            if "output" in rows:
                head = model.get_output_embeddings().weight
                head[base:] = rows["output"].to(head.dtype)
    proj = load_file(path / manifest["projector"])
    model.model.multi_modal_projector.load_state_dict({k: v.to(dtype) for k, v in proj.items()})

    processor.tokenizer.padding_side = "left"
    if manifest.get("adapter"):
        from .adapters import peft_from_pretrained

        return peft_from_pretrained(model, path / manifest["adapter"], is_trainable=is_trainable), processor
    return model, processor
