"""Embedding images and texts with a CLIP-interface model folder (``VisionTextDualEncoderModel``, ``CLIPModel``,
anything ``AutoModel`` loads with ``get_image_features`` and ``get_text_features``) or a compact CLIP over a
registered tower (:mod:`vlm.clip_parts`), for retrieval and zero-shot evaluation.

Contract: :func:`is_dual_encoder` tells such a folder from any other (a vision tower alone, a llava model) by
the class its config maps to (no model names). :class:`ClipEmbedder` loads the model, its tokenizer and image
statistics from the folder and returns unit vectors. Images are preprocessed as
:func:`vlm.eval.retrieval.preprocess_images` does (padded to square, bicubic to the tower's input size), so
figures compare across models; with ``flip_average`` (default: what the folder's ``lit.json`` says, else off)
each image's features are averaged with those of its mirror image before normalising.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from vlm.clip_parts import LIT_FILE  # written beside a LiT-trained model (stock or compact)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _model_class(folder: str | os.PathLike):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    return AutoModel._model_mapping.get(type(config), None)


def is_dual_encoder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a model with CLIP's interface (image and text features in one space)."""
    if not Path(folder, "config.json").is_file():
        return False
    try:
        cls = _model_class(folder)
    except (OSError, ValueError, KeyError):
        return False
    return cls is not None and all(callable(getattr(cls, n, None)) for n in ("get_image_features", "get_text_features"))


def _pooled(out) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor, or an output whose ``pooler_output`` holds them)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipEmbedder:
    """Unit image and text vectors of a CLIP-interface model folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, dtype: torch.dtype = torch.float32, flip_average: bool | None = None):
        from transformers import AutoModel, AutoTokenizer

        from vlm import clip_parts
        from vlm.errors import ModelNotFoundError
        from vlm.vision import image_statistics

        self.folder = Path(folder)
        if clip_parts.is_clip_parts(self.folder):
            self.model, processor = clip_parts.load_clip_parts(self.folder, dtype)
            self.tokenizer = processor.tokenizer
            stats = image_statistics(self.folder / clip_parts.PROCESSOR)
        elif is_dual_encoder(self.folder):
            self.model = AutoModel.from_pretrained(self.folder, dtype=dtype).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            stats = image_statistics(self.folder)
        else:
            raise ModelNotFoundError(f"{folder} is not a CLIP folder (a model with get_image_features and "
                                     "get_text_features, such as `vlm train clip` writes, or a compact CLIP with "
                                     f"{clip_parts.MANIFEST})")
        lit = json.loads((self.folder / LIT_FILE).read_text()) if (self.folder / LIT_FILE).is_file() else {}
        self.flip_average = bool(lit.get("flip_average", False)) if flip_average is None else flip_average
        self.mean = stats.get("image_mean", IMAGENET_MEAN)
        self.std = stats.get("image_std", IMAGENET_STD)
        self.size = self.model.config.vision_config.image_size
        self.dtype = dtype

    @torch.no_grad()
    def images(self, images: Sequence) -> torch.Tensor:
        """(N, D) unit vectors of PIL images."""
        from .retrieval import preprocess_images

        pixels = preprocess_images(images, self.size, self.mean, self.std).to(self.dtype)
        feats = _pooled(self.model.get_image_features(pixel_values=pixels)).float()
        if self.flip_average:
            feats = (feats + _pooled(self.model.get_image_features(pixel_values=pixels.flip(-1))).float()) / 2
        return F.normalize(feats, dim=-1)

    @torch.no_grad()
    def texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N, D) unit vectors of texts. A text longer than the text tower's positions keeps its first tokens
        and its final one (the end token CLIP-style towers pool at)."""
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        out = []
        for s in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[s:s + batch_size]))["input_ids"]
            if limit:
                ids = [x if len(x) <= limit else x[:limit - 1] + x[-1:] for x in ids]
            enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            out.append(_pooled(self.model.get_text_features(**enc)).float())
        return F.normalize(torch.cat(out), dim=-1) if out else torch.empty(0, self.model.config.projection_dim)

    def describe(self) -> str:
        return (f"{type(self.model).__name__} (get_image_features/get_text_features, {self.size} px"
                f"{', flip-averaged' if self.flip_average else ''})")
