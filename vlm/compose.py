"""Compose a ``LlavaForConditionalGeneration`` from a vision tower and a causal LM (LLaVA-1.5 design).

- tower: any vision model llava builds from its config (CLIP, SigLIP, DINOv2; see :mod:`vlm.vision`), at
  the input size asked for
- projector: 2-layer MLP with GELU (``LlavaMultiModalProjector``)
- features: the hidden state of ``vision_feature_layer`` (default -2, the second-to-last layer; a list
  concatenates layers), class token dropped when the tower has one (``"default"``), else all tokens
- one ``<image>`` token per selected feature, expanded by the processor
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from . import registry
from .errors import ModelNotFoundError
from .processor import build_processor, ensure_image_token
from .vision import feature_strategy, image_token_count, load_vision

DEFAULT_FEATURE_LAYER = -2  # LLaVA-1.5: the second-to-last layer


def _llm_not_found(llm, path: str, exc: Exception) -> ModelNotFoundError:
    tried = f"registered name -> {path}" if str(llm) in registry.LLM_REGISTRY else f"path or hub id {path!r}"
    known = ", ".join(sorted(registry.LLM_REGISTRY))
    return ModelNotFoundError(f"could not load LLM {str(llm)!r} (tried: {tried}; registered names: {known}): {exc}")


def load_llm(llm: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a registered name, a local folder or a hub id the user has cached."""
    path = registry.resolve_llm(llm)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise _llm_not_found(llm, path, exc) from None
    return model, load_tokenizer(llm)


def load_tokenizer(llm: str | os.PathLike):
    """The tokenizer of an LLM (registered name, local folder or cached hub id), without loading its weights."""
    path = registry.resolve_llm(llm)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _llm_not_found(llm, path, exc) from None


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


def check_feature_layer(layer, num_hidden_layers: int):
    """``layer`` must index the tower's ``num_hidden_layers + 1`` hidden states (an int or a list of ints)."""
    layers = [layer] if isinstance(layer, int) else layer
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(i, int) for i in layers):
        raise ValueError(f"vision_feature_layer must be an int or a list of ints, got {layer!r}")
    bad = [i for i in layers if not -(num_hidden_layers + 1) <= i <= num_hidden_layers]
    if bad:
        raise ValueError(f"vision_feature_layer {bad} out of range for a tower with {num_hidden_layers} layers "
                         f"(hidden states {-(num_hidden_layers + 1)}..{num_hidden_layers})")
    return list(layers) if isinstance(layer, (list, tuple)) else layer


def compose(tower, llm, tokenizer, preprocessing: dict | None = None,
            vision_feature_layer: int | list[int] = DEFAULT_FEATURE_LAYER):
    """Return ``(LlavaForConditionalGeneration, LlavaProcessor)`` built from the given parts.

    The input size is the tower's ``config.image_size`` (see :func:`vlm.vision.resize`).
    """
    layer = check_feature_layer(vision_feature_layer, tower.config.num_hidden_layers)
    strategy = feature_strategy(tower.config)
    image_token_id = _add_image_token_row(llm, tokenizer)
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=image_token_count(tower.config, strategy),
        projector_hidden_act="gelu",
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
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
    processor = build_processor(tokenizer, tower.config, strategy=strategy, **(preprocessing or {}))
    return model.eval(), processor


def build(vision, llm, dtype: torch.dtype = torch.float32, image_size: int | None = None,
          vision_feature_layer: int | list[int] = DEFAULT_FEATURE_LAYER):
    """Load both parts and compose them. ``vision``: a vision config (fresh tower), a registered tower name
    (e.g. ``dinov2-vits14``), a tower folder or a cached hub id; ``image_size``: the input size (default:
    the tower's own). See :func:`compose`."""
    tower, preprocessing = load_vision(vision, dtype, image_size)
    llm_model, tokenizer = load_llm(llm, dtype)
    return compose(tower, llm_model, tokenizer, preprocessing, vision_feature_layer)


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
