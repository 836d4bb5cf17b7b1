"""Vision towers: any model transformers' llava builds from its ``vision_config`` (``AutoModel``), such as
``CLIPVisionModel``, ``SiglipVisionModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``.

Contract:
- :func:`load_vision` takes a vision config (a fresh, randomly initialised tower), a registered tower name
  (:data:`vlm.registry.VISION_REGISTRY`, fetched and converted on first use), a local folder or a cached hub id,
  and returns the tower with the image statistics found beside it. A folder of a two-tower model (a full
  CLIP or SigLIP checkpoint) gives its vision tower.
- :func:`resize` sets the tower's input size: its position table is resampled once by the tower's own
  ``interpolate_pos_encoding`` (bicubic, as DINOv2/CLIP/SigLIP do at run time) and ``config.image_size``
  becomes the input size, so the tower stays a plain transformers module that stock llava rebuilds from
  its config, and every reader of ``vision_config.image_size`` sees the size images are fed at.
- :func:`extra_tokens` is the number of tokens the tower emits besides one per patch (a class token,
  register tokens), measured by a shape-only forward pass on the meta device, never from names.
  :func:`feature_strategy` follows LLaVA: drop the class token (``"default"``) when there is one, keep all
  tokens (``"full"``) when there is none (SigLIP). Registers, if any, stay as image tokens.
- :func:`truncate` cuts a tower to its first ``layers`` layers as a plain instance of the same class (config
  ``num_hidden_layers = layers``), so its stock ``pooler_output`` (DINOv2: the final norm of the class token)
  reads that layer and a saved copy holds only those layers (LiT's ``image_layer``, :mod:`vlm.clip_parts`).
"""
from __future__ import annotations

import copy
import functools
import json
import os

import torch

from . import registry
from .errors import ModelNotFoundError


def _tower_class(config):
    from transformers import AutoModel

    try:
        return AutoModel._model_mapping[type(config)]
    except KeyError:
        raise ModelNotFoundError(f"transformers has no model class for vision config {type(config).__name__}") from None


def tower_config(path: str):
    """The vision config of a tower folder; for a two-tower checkpoint (``vision_config`` inside), that part."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return getattr(config, "vision_config", None) or config


def load_vision(vision, dtype: torch.dtype = torch.float32, image_size: int | None = None):
    """(tower, preprocessing) for a vision config, a registered name, a local folder or a cached hub id.

    ``preprocessing`` holds the image mean/std found beside the checkpoint (empty: none found).
    ``image_size``: the input size (default: the tower's own); see :func:`resize`.
    """
    from transformers import PretrainedConfig

    # loaded in float32 and resized before the cast, so a size change never resamples a rounded table
    if isinstance(vision, PretrainedConfig):
        tower = _tower_class(vision)(vision)
        return resize(tower, image_size).to(dtype), {}
    path = registry.resolve_vision(vision)
    try:
        config = tower_config(path)
        tower = _tower_class(config).from_pretrained(path, config=config, dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError) as exc:
        known = ", ".join(sorted(registry.VISION_REGISTRY))
        raise ModelNotFoundError(f"could not load vision tower {str(vision)!r} (registered names: {known}): {exc}") from None
    return resize(tower, image_size).to(dtype), image_statistics(path)


def image_statistics(path: str | os.PathLike) -> dict:
    """``{"image_mean", "image_std"}`` from the image processor saved beside a tower, or ``{}``."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(path)
        return {"image_mean": list(proc.image_mean), "image_std": list(proc.image_std)}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


@functools.lru_cache(maxsize=32)
def _output_length(config_class: type, config_json: str) -> int:
    config = config_class.from_dict(json.loads(config_json))
    with torch.device("meta"):
        probe = _tower_class(config)(config)
        pixels = torch.empty(1, config.num_channels, config.image_size, config.image_size)
        return int(probe(pixel_values=pixels).last_hidden_state.shape[1])


def extra_tokens(config) -> int:
    """Tokens the tower outputs beyond one per patch (CLIP and DINOv2: 1, SigLIP: 0, DINOv2 + 4 registers: 5)."""
    grid = config.image_size // config.patch_size
    return _output_length(type(config), config.to_json_string(use_diff=False)) - grid * grid


def feature_strategy(config) -> str:
    """LLaVA's ``vision_feature_select_strategy`` for this tower: drop the class token if there is one."""
    return "default" if extra_tokens(config) > 0 else "full"


def image_token_count(config, strategy: str | None = None) -> int:
    """``<image>`` tokens per image: what llava feeds the projector at ``config.image_size``."""
    extra = extra_tokens(config)
    strategy = strategy or ("default" if extra > 0 else "full")
    return (config.image_size // config.patch_size) ** 2 + extra - (1 if strategy == "default" else 0)


def _position_module(tower):
    for module in tower.modules():
        if callable(getattr(type(module), "interpolate_pos_encoding", None)):
            return module
    raise ValueError(f"{type(tower).__name__} has no position-embedding module with interpolate_pos_encoding; "
                     "it cannot take another input size")


def resize(tower, image_size: int | None):
    """``tower`` with input size ``image_size`` (a multiple of the patch size); the same object if unchanged.

    The parameter whose shape depends on the image size (the position table) is filled with what the
    tower's own ``interpolate_pos_encoding`` produces for the new size; everything else is copied.
    """
    config = tower.config
    if image_size is None or image_size == config.image_size:
        return tower
    patch = config.patch_size
    if image_size < patch or image_size % patch:
        raise ValueError(f"image size {image_size} must be a positive multiple of the patch size {patch}")
    new_config = copy.deepcopy(config)
    new_config.image_size = image_size
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in _tower_class(new_config)(new_config).state_dict().items()}
    state = tower.state_dict()
    changed = [k for k, shape in shapes.items() if k in state and state[k].shape != shape]
    if len(changed) != 1:
        raise ValueError(f"{type(tower).__name__}: expected one size-dependent parameter (the position table), "
                         f"found {changed}")
    (key,) = changed
    old = state[key]
    dim = old.shape[-1]
    old_grid = config.image_size // patch
    new_grid = image_size // patch
    leading = old.numel() // dim - old_grid * old_grid  # rows before the patch grid (the class token's)
    with torch.no_grad():
        tokens = torch.zeros(1, leading + new_grid * new_grid, dim, dtype=old.dtype)
        table = _position_module(tower).interpolate_pos_encoding(tokens, image_size, image_size)
    if table.numel() != torch.Size(shapes[key]).numel():
        raise ValueError(f"{type(tower).__name__}: resampled position table has {tuple(table.shape)} values, "
                         f"{key} needs {tuple(shapes[key])}")
    state[key] = table.reshape(shapes[key]).to(old.dtype)
    resized = _tower_class(new_config)(new_config).to(old.dtype)
    resized.load_state_dict(state, strict=True)
    return resized.eval() if not tower.training else resized


def truncate(tower, layers: int):
    """``tower`` with only its first ``layers`` layers (the same object when ``layers`` is 0 or all of them)."""
    config = tower.config
    total = config.num_hidden_layers
    if layers == 0 or layers == total:
        return tower
    if not 0 < layers < total:
        raise ValueError(f"image_layer must be in 1..{total} (0: all), got {layers}")
    d = config.to_dict()
    d["num_hidden_layers"] = layers
    for key in ("out_features", "out_indices", "stage_names"):  # backbone bookkeeping derived from the depth
        d.pop(key, None)
    new_config = type(config).from_dict(d)
    cut = type(tower)(new_config).to(next(tower.parameters()).dtype)
    result = cut.load_state_dict(tower.state_dict(), strict=False)
    dropped = [k for k in result.unexpected_keys if not any(f".{i}." in k for i in range(layers, total))]
    if result.missing_keys or dropped:
        raise ValueError(f"cannot cut {type(tower).__name__} to {layers} layers: missing {result.missing_keys[:3]}, "
                         f"unexpected {dropped[:3]}")
    return cut.train(tower.training)
