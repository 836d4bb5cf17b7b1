"""A CLIP's own uses: unit image and text vectors, and zero-shot classification.

Contract of :class:`Clip`:

* :meth:`Clip.load` takes a folder (or a shipped model name) and finds the CLIP in it, by contents only:
  - a stock folder whose config ``AutoModel`` maps to a class with ``get_image_features`` and
    ``get_text_features`` (a ``VisionTextDualEncoderModel`` as ``vlm train clip`` writes it, a ``CLIPModel``,
    ...), loaded with its tokenizer and its image processor's mean and std;
  - a compact CLIP over a registered tower (``clip_parts.json``, :mod:`vlm.clip_parts`);
  - a vlm model folder or shipped name that carries its CLIP as a ``clip/`` subfolder (one of the above).
  Anything else raises :class:`ClipNotFoundError` (a ``ModelNotFoundError``) naming the folder and saying
  how to get a CLIP.
* Images are anything :func:`vlm.images.load_image` takes (path, ``PIL.Image``, bytes, ``data:`` URL), checked
  and made RGB as for chat; then padded to square with the mean colour and resized bicubically to the
  tower's input size (:func:`preprocess`, the pixels every retrieval figure of vlm was measured on, so
  figures compare with ``vlm eval retrieval``). With ``flip_average`` (default: the folder's ``lit.json``, else
  off) an image's features are averaged with its mirror image's before normalising.
* :meth:`embed_images` / :meth:`embed_texts` return ``(N, D)`` float32 unit vectors, batched. A text longer
  than the text tower's positions keeps its first tokens and its last one (the end token CLIP pools at).
* :meth:`classify` scores one image against labels: each label's text vector is the renormalised mean of
  its unit vectors over the templates (CLIP's prompt ensembling; one template by default), and the
  probabilities are ``softmax(exp(logit_scale) * cosine)``. Returns ``(label, probability)`` pairs, best first.

Weights are float32 by default (bf16 is much slower than float32 on CPUs without AMX).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ImageError, ModelNotFoundError
from .images import ImageInput, load_image

CLIP_FOLDER = "clip"          # where a vlm model folder carries its CLIP
LIT_FILE = "lit.json"         # written beside a LiT-trained CLIP (flip_average, dev figures)
COMPACT_MANIFEST = "clip_parts.json"
DEFAULT_TEMPLATE = "a photo of {}."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOW_TO_GET = ("give a CLIP folder (`--clip PATH`, `clip=PATH`): train one with `vlm train clip` (writes a "
              "VisionTextDualEncoderModel folder), or use any CLIPModel folder")


class ClipNotFoundError(ModelNotFoundError):
    """No CLIP where one was asked for. The message says where it looked and how to get one."""


def _model_class(folder: Path):
    from transformers import AutoConfig, AutoModel

    return AutoModel._model_mapping.get(type(AutoConfig.from_pretrained(folder)), None)


def is_clip_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` itself holds a CLIP (stock or compact), not counting a ``clip/`` subfolder."""
    folder = Path(folder)
    if (folder / COMPACT_MANIFEST).is_file():
        return True
    if not (folder / "config.json").is_file():
        return False
    try:
        cls = _model_class(folder)
    except (OSError, ValueError, KeyError):
        return False
    return cls is not None and all(callable(getattr(cls, n, None)) for n in ("get_image_features", "get_text_features"))


def find_clip(name_or_path: str | os.PathLike) -> Path:
    """The CLIP folder of ``name_or_path``: the folder itself, or its ``clip/`` subfolder (also for a shipped
    model name). Raises :class:`ClipNotFoundError` when there is none."""
    from .loading import model_path

    path = model_path(name_or_path)
    if not path.is_dir():
        raise ClipNotFoundError(f"CLIP folder not found: {path}; {HOW_TO_GET}")
    for candidate in (path, path / CLIP_FOLDER):
        if is_clip_folder(candidate):
            return candidate
    raise ClipNotFoundError(
        f"{name_or_path} holds no CLIP (neither a model with get_image_features/get_text_features, nor "
        f"{COMPACT_MANIFEST}, nor a {CLIP_FOLDER}/ subfolder with one); {HOW_TO_GET}")


def preprocess(images: Sequence, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL images -> (N, 3, size, size) normalised float32: padded to square with the mean colour,
    then bicubic to ``size``, as the llava processor treats non-square images."""
    import numpy as np
    from PIL import Image

    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.width != im.height:
            side = max(im.size)
            canvas = Image.new("RGB", (side, side), tuple(int(round(m * 255)) for m in mean))
            canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            im = canvas
        im = im.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _pooled(out) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor, or an output whose ``pooler_output`` holds them)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _image_statistics(folder: Path) -> dict:
    from .vision import image_statistics

    return image_statistics(folder)


class Clip:
    """A CLIP-interface model with its tokenizer and image statistics (see the module docstring)."""

    def __init__(self, model, tokenizer, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip_average: bool = False,
                 folder: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mean, self.std = tuple(mean), tuple(std)
        self.flip_average = flip_average
        self.folder = folder
        self.size = int(model.config.vision_config.image_size)
        self.dim = int(model.config.projection_dim)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
             flip_average: bool | None = None) -> "Clip":
        folder = find_clip(name_or_path)
        if (folder / COMPACT_MANIFEST).is_file():
            try:
                from . import clip_parts
            except ImportError:
                raise ClipNotFoundError(f"{folder} is a compact CLIP ({COMPACT_MANIFEST}), which needs "
                                        "vlm.clip_parts; this vlm has none") from None
            model, processor = clip_parts.load_clip_parts(folder, dtype)
            tokenizer, stats = processor.tokenizer, _image_statistics(folder / clip_parts.PROCESSOR)
        else:
            from transformers import AutoModel, AutoTokenizer

            model = AutoModel.from_pretrained(folder, dtype=dtype)
            tokenizer, stats = AutoTokenizer.from_pretrained(folder), _image_statistics(folder)
        lit = json.loads((folder / LIT_FILE).read_text()) if (folder / LIT_FILE).is_file() else {}
        return cls(model, tokenizer, mean=stats.get("image_mean", IMAGENET_MEAN),
                   std=stats.get("image_std", IMAGENET_STD), folder=folder,
                   flip_average=bool(lit.get("flip_average", False)) if flip_average is None else flip_average)

    # -- vectors ----------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def embed_pil(self, images: Sequence, batch_size: int = 32) -> torch.Tensor:
        """(N, D) unit vectors of already-loaded RGB ``PIL.Image``s."""
        out = []
        for s in range(0, len(images), batch_size):
            pixels = preprocess(images[s:s + batch_size], self.size, self.mean, self.std).to(self.dtype)
            feats = _pooled(self.model.get_image_features(pixel_values=pixels)).float()
            if self.flip_average:
                feats = (feats + _pooled(self.model.get_image_features(pixel_values=pixels.flip(-1))).float()) / 2
            out.append(F.normalize(feats, dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def embed_images(self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 32) -> torch.Tensor:
        """(N, D) float32 unit vectors; ``images``: one image or a sequence (paths, PIL images, bytes, data URLs).
        A bad image raises :class:`vlm.ImageError` naming it."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        loaded = []
        for i, im in enumerate(images):
            try:
                loaded.append(load_image(im))
            except ImageError as exc:
                where = str(im) if isinstance(im, (str, os.PathLike)) and not str(im).startswith("data:") else f"#{i}"
                raise ImageError(f"image {where}: {exc}") from None
        return self.embed_pil(loaded, batch_size)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str] | str, batch_size: int = 256) -> torch.Tensor:
        """(N, D) float32 unit vectors of texts (one text or a sequence)."""
        if isinstance(texts, str):
            texts = [texts]
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        out = []
        for s in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[s:s + batch_size]))["input_ids"]
            if limit:
                ids = [x if len(x) <= limit else x[:limit - 1] + x[-1:] for x in ids]
            enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            out.append(F.normalize(_pooled(self.model.get_text_features(**enc)).float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.dim)

    # -- zero-shot ----------------------------------------------------------------------------------
    def label_vectors(self, labels: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> torch.Tensor:
        """(L, D) unit vectors of labels, each the renormalised mean over ``templates`` (``{}`` = the label)."""
        labels, templates = list(labels), list(templates)
        if not labels:
            raise ValueError("classify needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {labels}")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every template must contain '{{}}' where the label goes, got {templates}")
        vecs = self.embed_texts([t.format(label) for label in labels for t in templates])
        return F.normalize(vecs.view(len(labels), len(templates), -1).mean(1), dim=-1)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    def classify(self, image: ImageInput, labels: Sequence[str], template: str = DEFAULT_TEMPLATE,
                 templates: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """``(label, probability)`` for every label, best first (see the module docstring). ``templates``
        (several) overrides ``template`` (one) and averages over them."""
        labels = [labels] if isinstance(labels, str) else list(labels)
        text = self.label_vectors(labels, templates if templates is not None else [template])
        probs = torch.softmax(self.logit_scale * (self.embed_images([image]) @ text.T)[0], dim=-1)
        return sorted(zip(labels, (float(p) for p in probs)), key=lambda lp: -lp[1])

    def save(self, path: str | os.PathLike) -> Path:
        """Write this CLIP as a folder :meth:`load` reads: a copy of the folder it was loaded from (a compact
        one stays compact), else the stock model, tokenizer, an image processor with its statistics and
        ``lit.json``."""
        import shutil

        path = Path(path)
        if self.folder is not None:
            if path.resolve() != self.folder.resolve():
                shutil.copytree(self.folder, path, dirs_exist_ok=True)
            return path
        from transformers import CLIPImageProcessor

        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        CLIPImageProcessor(size={"shortest_edge": self.size}, crop_size={"height": self.size, "width": self.size},
                           image_mean=list(self.mean), image_std=list(self.std)).save_pretrained(path)
        (path / LIT_FILE).write_text(json.dumps({"flip_average": self.flip_average}, indent=2))
        return path

    def describe(self) -> str:
        return (f"{type(self.model).__name__} ({self.size} px, {self.dim}-d"
                f"{', flip-averaged' if self.flip_average else ''})")
