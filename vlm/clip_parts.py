"""The compact form of a CLIP over a registered vision tower (what a shipped model carries as ``clip/``).

A LiT CLIP (``VisionTextDualEncoderModel``: a locked registered tower, cut to its first layers, plus a trained
text tower) saved the stock way holds the whole tower, which vlm fetches and never ships. This form stores only
what training made::

    clip_parts.json           {"format": 1, "base_vision": "dinov2-vits14", "vision_image_size": 224,
                               "vision_layers": 12, "projection_dim": 256, ...}
    text/                     the text tower (config.json + model.safetensors; a CLIPTextModel for LiT)
    projections.safetensors   visual_projection.weight, text_projection.weight, logit_scale
    processor/                the VisionTextDualEncoderProcessor (caption tokenizer + the tower's image processor)
    lit.json                  how it was trained (flip_average, dev figures), when the source had one

Contract:
- :func:`save_clip_parts` writes the folder. It first checks that the model's tower equals the registered
  ``base_vision`` at the tower's input size and depth (as :mod:`vlm.parts` does for a llava tower; an unlocked,
  fine-tuned tower must stay a stock folder), then reloads what it wrote and checks that text features, image
  features and ``logit_scale`` match the model in memory (with the stored weights rounded to ``dtype``), so a
  folder that does not round-trip is never reported as written.
- :func:`load_clip_parts` composes a stock ``VisionTextDualEncoderModel`` in memory: the registered tower
  (:func:`vlm.vision.load_vision`: fetched through :mod:`vlm.registry` on first use, resized to
  ``vision_image_size``), cut to ``vision_layers`` (:func:`vlm.vision.truncate`), and the stored parts.
- :func:`save_stock` materialises a plain folder from it, which the stock class loads
  (``VisionTextDualEncoderModel.from_pretrained``), with the processor and ``lit.json`` beside it.
- :func:`is_clip_parts` tells such a folder by its manifest. A compact folder has no ``config.json``, so
  nothing mistakes it for a stock model.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ModelNotFoundError

MANIFEST = "clip_parts.json"
FORMAT = 1
TEXT = "text"
PROJECTIONS = "projections.safetensors"
PROCESSOR = "processor"
LIT_FILE = "lit.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = 1e-5  # largest feature difference a round trip may show
_PROBE_TEXTS = ["a dog runs on the beach .", "two children play in the snow"]


def is_clip_parts(folder: str | os.PathLike) -> bool:
    return Path(folder, MANIFEST).is_file()


def _head_state(model) -> dict:
    """Every weight outside the two towers (the projections and ``logit_scale``)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("vision_model.", "text_model."))}


def registered_tower(base_vision: str, image_size: int, layers: int):
    """The registered tower (float32) at ``image_size``, cut to ``layers`` layers: a compact CLIP's image side."""
    from . import registry
    from .vision import load_vision, truncate

    if base_vision not in registry.VISION_REGISTRY:
        known = ", ".join(sorted(registry.VISION_REGISTRY))
        raise ValueError(f"base_vision {base_vision!r} is not a registered tower (registered: {known})")
    tower, _ = load_vision(base_vision, torch.float32, image_size)
    return truncate(tower.eval(), layers)


def _check_registered_tower(tower, base_vision: str) -> None:
    """The tower must equal the registered one at its input size and depth, exactly (float32, as loading builds it)."""
    config = tower.config
    reference = registered_tower(base_vision, config.image_size, config.num_hidden_layers).state_dict()
    ours = tower.state_dict()
    for name in sorted(set(reference) | set(ours)):
        mine, theirs = ours.get(name), reference.get(name)
        if mine is None or theirs is None or mine.shape != theirs.shape or not torch.equal(mine.float(), theirs):
            raise ValueError(f"the CLIP's vision tower differs from the registered {base_vision!r} (float32) at "
                             f"{name}; keep it as a stock folder")


@torch.no_grad()
def feature_difference(a, b, tokenizer) -> float:
    """Largest absolute difference between two CLIPs' text features, image features and ``logit_scale``, on
    two captions and two fixed images at ``a``'s input size."""
    was = a.training, b.training
    a.eval(), b.eval()
    enc = tokenizer(_PROBE_TEXTS, padding=True, return_tensors="pt")
    size = a.config.vision_config.image_size
    pixels = torch.linspace(-1, 1, 2 * 3 * size * size).view(2, 3, size, size)

    def feats(model):
        dtype = next(model.parameters()).dtype
        text = model.get_text_features(**enc).pooler_output.float()
        image = model.get_image_features(pixel_values=pixels.to(dtype)).pooler_output.float()
        return text, image, model.logit_scale.detach().float()

    diff = max(float((x - y).abs().max()) for x, y in zip(feats(a), feats(b)))
    a.train(was[0]), b.train(was[1])
    return diff


def save_clip_parts(model, processor, out: str | os.PathLike, base_vision: str, dtype: torch.dtype = torch.float32,
                    lit: dict | None = None, tolerance: float = TOLERANCE) -> Path:
    """Write ``model`` (a ``VisionTextDualEncoderModel`` over ``base_vision``) as a compact folder.

    ``processor``: its ``VisionTextDualEncoderProcessor``. ``dtype``: the stored weights' (float32: features equal
    the model's; bfloat16: half the size, features those of the rounded weights). ``lit``: written as
    ``lit.json``. Raises ``ValueError`` when the tower is not the registered one, ``RuntimeError`` when the
    written folder does not reproduce the model's features within ``tolerance``.
    """
    name = {v: k for k, v in DTYPES.items()}.get(dtype)
    if name is None:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    vision = model.vision_model
    _check_registered_tower(vision, base_vision)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cast = lambda state: {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}  # noqa: E731
    model.text_model.save_pretrained(out / TEXT, state_dict=cast(model.text_model.state_dict()))
    save_file(cast(_head_state(model)), out / PROJECTIONS)
    processor.save_pretrained(out / PROCESSOR)
    if lit is not None:
        (out / LIT_FILE).write_text(json.dumps(lit, indent=2))
    manifest = {
        "format": FORMAT,
        "base_vision": base_vision,
        "vision_image_size": int(vision.config.image_size),
        "vision_layers": int(vision.config.num_hidden_layers),
        "projection_dim": int(model.config.projection_dim),
        "logit_scale_init_value": float(model.config.logit_scale_init_value),
        "dtype": name,
        "text": TEXT,
        "projections": PROJECTIONS,
        "processor": PROCESSOR,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))

    expected = model
    if dtype != torch.float32 or any(p.dtype != torch.float32 for p in model.parameters()):
        expected = copy.deepcopy(model).float()  # the model as stored: text tower and projections through ``dtype``
        with torch.no_grad():
            for key, tensor in expected.state_dict().items():
                if not key.startswith("vision_model."):
                    tensor.copy_(tensor.to(dtype))
    loaded, proc = load_clip_parts(out)
    diff = feature_difference(expected, loaded, proc.tokenizer)
    if diff > tolerance:
        raise RuntimeError(f"{out}: the reloaded CLIP's features differ from the model's by {diff:.2e}")
    return out


def _manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{path} is not a readable compact CLIP folder: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ModelNotFoundError(f"{path}: unsupported compact CLIP format {manifest.get('format')!r} (readable: {FORMAT})")
    return manifest


def load_clip_parts(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(stock ``VisionTextDualEncoderModel`` in eval mode, ``VisionTextDualEncoderProcessor``) from a compact folder."""
    from transformers import AutoModel, VisionTextDualEncoderConfig, VisionTextDualEncoderModel, \
        VisionTextDualEncoderProcessor

    path = Path(path)
    manifest = _manifest(path)
    tower = registered_tower(manifest["base_vision"], manifest["vision_image_size"], manifest["vision_layers"])
    text = AutoModel.from_pretrained(path / manifest["text"], dtype=torch.float32)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        tower.config, text.config, projection_dim=manifest["projection_dim"],
        logit_scale_init_value=manifest["logit_scale_init_value"])
    model = VisionTextDualEncoderModel(config, vision_model=tower, text_model=text)
    head = load_file(path / manifest["projections"])
    missing = set(_head_state(model)) - set(head)
    if missing:
        raise ModelNotFoundError(f"{path}: {manifest['projections']} lacks {', '.join(sorted(missing))}")
    model.load_state_dict({k: v.float() for k, v in head.items()}, strict=False)
    processor = VisionTextDualEncoderProcessor.from_pretrained(path / manifest["processor"])
    return model.to(dtype).eval(), processor


def save_stock(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Materialise a compact folder as a plain ``VisionTextDualEncoderModel`` folder (tower included)."""
    from transformers import VisionTextDualEncoderModel

    path, out = Path(path), Path(out)
    model, processor = load_clip_parts(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if (path / LIT_FILE).is_file():
        shutil.copyfile(path / LIT_FILE, out / LIT_FILE)
    diff = feature_difference(model, VisionTextDualEncoderModel.from_pretrained(out), processor.tokenizer)
    if diff > TOLERANCE:
        raise RuntimeError(f"{out}: the stock folder's features differ from the compact CLIP's by {diff:.2e}")
    return out
