"""Compose a ``LlavaForConditionalGeneration`` from a CLIP vision tower and a causal LM (LLaVA-1.5 design).

- projector: 2-layer MLP with GELU (``LlavaMultiModalProjector``)
- features: second-to-last vision layer, CLS dropped (``vision_feature_select_strategy="default"``)
- one ``<image>`` token per patch, expanded by the processor
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from . import hub
from .errors import ModelNotFoundError
from .processor import build_processor, ensure_image_token, image_token_count


def _llm_not_found(llm, path: str, exc: Exception) -> ModelNotFoundError:
    tried = f"registered name -> {path}" if str(llm) in hub.LLM_REGISTRY else f"path or hub id {path!r}"
    known = ", ".join(sorted(hub.LLM_REGISTRY))
    return ModelNotFoundError(f"could not load LLM {str(llm)!r} (tried: {tried}; registered names: {known}): {exc}")


def load_llm(llm: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a registered name, a local folder or a hub id the user has cached."""
    path = hub.resolve_llm(llm)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise _llm_not_found(llm, path, exc) from None
    return model, load_tokenizer(llm)


def load_tokenizer(llm: str | os.PathLike):
    """The tokenizer of an LLM (registered name, local folder or cached hub id), without loading its weights."""
    path = hub.resolve_llm(llm)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _llm_not_found(llm, path, exc) from None


def load_vision(vision, dtype: torch.dtype = torch.float32) -> tuple[CLIPVisionModel, dict]:
    """(tower, preprocessing) for a ``CLIPVisionConfig`` (fresh tower), local folder or hub id.

    ``preprocessing`` holds the image mean/std found beside the checkpoint (empty means CLIP's).
    """
    if isinstance(vision, CLIPVisionConfig):
        return CLIPVisionModel(vision).to(dtype), {}
    path = hub.resolve_local_or_hub(vision, "vision tower")
    try:
        tower = CLIPVisionModel.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load vision tower {str(vision)!r}: {exc}") from None
    preprocessing = {}
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
        preprocessing = {"image_mean": list(proc.image_mean), "image_std": list(proc.image_std)}
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no preprocessor config beside the tower: CLIP's statistics
    return tower, preprocessing


def _add_image_token_row(llm, tokenizer) -> int:
    """Grow the embedding table for ``<image>``. The new row is the mean row (deterministic)."""
    old = llm.get_input_embeddings().weight.shape[0]
    image_token_id = ensure_image_token(tokenizer)
    if image_token_id >= old:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = llm.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0, keepdim=True)
            out = llm.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0, keepdim=True)
    return image_token_id


def compose(tower: CLIPVisionModel, llm, tokenizer, preprocessing: dict | None = None):
    """Return ``(LlavaForConditionalGeneration, LlavaProcessor)`` built from the given parts."""
    image_token_id = _add_image_token_row(llm, tokenizer)
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=image_token_count(tower.config),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(llm.dtype)
    model.generation_config = llm.generation_config
    model.config.dtype = llm.dtype
    processor = build_processor(tokenizer, tower.config, **(preprocessing or {}))
    return model.eval(), processor


def build(vision, llm, dtype: torch.dtype = torch.float32):
    """Load both parts and compose them. See :func:`compose`."""
    tower, preprocessing = load_vision(vision, dtype)
    llm_model, tokenizer = load_llm(llm, dtype)
    return compose(tower, llm_model, tokenizer, preprocessing)


def load_llava(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a saved llava folder with stock transformers classes."""
    from transformers import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor


def is_llava_folder(path: Path) -> bool:
    import json

    cfg = path / "config.json"
    if not cfg.exists():
        return False
    return json.loads(cfg.read_text()).get("model_type") == "llava"
