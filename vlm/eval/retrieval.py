"""Image-text retrieval: recall@K, and embedding images / captions into a stage-0 retrieval space.

The retrieval space (see :class:`RetrievalSpec`) is the one the stage-0 tower was trained into, or one fitted
later on the frozen tower (``vlm train heads``): an image is the tower's features (its pooled output, or that
plus the mean patch tokens of its last two layers, optionally averaged with the mirrored image) through a
linear head; a caption is an LLM's pooled hidden states at one layer (frozen, "locked" text side) or a
tf-idf bag of its tokens (see :class:`TextSide`). Both are L2-normalised, and similarity is their dot
product. A trained tower folder holds ``retrieval.json``, ``retrieval_head.safetensors`` and
``retrieval_text.safetensors`` beside the tower files.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

SPEC_FILE = "retrieval.json"
HEAD_FILE = "retrieval_head.safetensors"
TEXT_FILE = "retrieval_text.safetensors"


def recall_at_k(sim: torch.Tensor, text_image: Sequence[int] | torch.Tensor,
                ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K in both directions for a similarity matrix ``sim`` of shape (n_images, n_texts).

    ``text_image[j]`` is the index of the image caption ``j`` describes. Image-to-text (``i2t``): an image
    is a hit when any of its captions ranks in its top K texts. Text-to-image (``t2i``): a caption is a hit
    when its image ranks in its top K images. Ties count against the query (a constant matrix scores 0 at
    K=1, not 100%). Values are fractions.
    """
    sim = torch.as_tensor(sim, dtype=torch.float32)
    labels = torch.as_tensor(text_image, dtype=torch.long)
    if sim.dim() != 2:
        raise ValueError(f"sim must be 2-D (images, texts), got shape {tuple(sim.shape)}")
    n_img, n_txt = sim.shape
    if labels.shape != (n_txt,):
        raise ValueError(f"text_image must have one entry per text ({n_txt}), got shape {tuple(labels.shape)}")
    if n_txt and (labels.min() < 0 or labels.max() >= n_img):
        raise ValueError(f"text_image entries must be image indices in [0, {n_img})")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    # t2i: rank of the true image for each text = number of images scoring >= it, minus itself.
    true_t2i = sim[labels, torch.arange(n_txt)]  # (n_txt,)
    rank_t2i = (sim >= true_t2i.unsqueeze(0)).sum(0) - 1  # 0 = best
    # i2t: negatives scoring at or above the image's best-scoring caption (other positives don't count).
    positive = torch.zeros(n_img, n_txt, dtype=torch.bool)
    positive[labels, torch.arange(n_txt)] = True
    best_pos = sim.masked_fill(~positive, -math.inf).amax(1, keepdim=True) if n_txt else torch.zeros(n_img, 1)
    rank_i2t = (sim.masked_fill(positive, -math.inf) >= best_pos).sum(1)
    has_caption = positive.any(1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((rank_i2t[has_caption] < k).float().mean()) if has_caption.any() else 0.0
        out[f"t2i_r{k}"] = float((rank_t2i < k).float().mean()) if n_txt else 0.0
    return out


def chance_recall(n_images: int, captions_per_image: int, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall@K of a random ranking (same keys as :func:`recall_at_k`)."""
    n_txt = n_images * captions_per_image
    out = {}
    for k in sorted(set(ks)):
        # i2t: P(at least one of c positives among K drawn from n_txt) = 1 - C(n-c, K) / C(n, K)
        miss = math.comb(n_txt - captions_per_image, k) / math.comb(n_txt, k) if k <= n_txt else 0.0
        out[f"i2t_r{k}"] = 1.0 - miss
        out[f"t2i_r{k}"] = min(1.0, k / n_images)
    return out


# ----------------------------------------------------------------------------------------------- text side
@contextmanager
def truncated(llm, layer: int):
    """Temporarily keep only the decoder layers needed for ``hidden_states[layer]`` (exact for ``layer`` >= 0;
    the last entry, after the final norm, needs the whole model)."""
    base = getattr(llm, "model", llm)
    layers = base.layers
    if layer < 0 or layer >= len(layers):
        yield llm
        return
    base.layers = layers[: layer + 1]  # hidden_states[layer] is the input of layer ``layer``
    try:
        yield llm
    finally:
        base.layers = layers


@torch.no_grad()
def embed_texts(llm, tokenizer, texts: Sequence[str], layer: int, batch_size: int = 64,
                dtype: torch.dtype | None = None, token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-pooled hidden states of ``llm`` at ``hidden_states[layer]`` over each text's tokens (no padding).

    ``llm`` is a causal LM (or its base model); ``layer`` indexes ``output_hidden_states`` (0 = embeddings,
    -1 = last layer after the final norm); only the layers that can affect it run. With ``token_weight``
    (one weight per vocabulary id, e.g. :func:`sif_weights`) the mean is weighted by token.
    Returns float32 (len(texts), hidden), not normalised.
    """
    base = getattr(llm, "model", llm)
    dtype = dtype or next(base.parameters()).dtype
    device = next(base.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    result = torch.empty(len(texts), base.config.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch
    try:
        with truncated(base, layer):  # later layers cannot change hidden_states[layer]
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                enc = {k: v.to(device) for k, v in enc.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    hs = base(**enc, output_hidden_states=True).hidden_states[layer]
                mask = enc["attention_mask"].float()
                if token_weight is not None:
                    mask = mask * token_weight[enc["input_ids"].cpu()].to(mask.device)
                mask = mask.unsqueeze(-1)
                pooled = (hs.float() * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                result[torch.tensor(idx)] = pooled.cpu()
    finally:
        tokenizer.padding_side = side
    return result


def sif_weights(tokenizer, texts: Sequence[str], a: float) -> torch.Tensor:
    """Smooth inverse frequency weights ``a / (a + p(token))`` over the vocabulary, with ``p`` counted on
    ``texts`` (Arora et al., 2017): frequent tokens ("a", "the", "is") count little, rare content words fully."""
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    for start in range(0, len(texts), 1024):
        for ids in tokenizer(list(texts[start:start + 1024]), add_special_tokens=False)["input_ids"]:
            counts.index_add_(0, torch.tensor(ids, dtype=torch.long), torch.ones(len(ids), dtype=torch.float64))
    p = counts / counts.sum().clamp_min(1)
    return (a / (a + p)).float()


def caption_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, lower-cased and with a leading space, so that a word is one id wherever it
    stands in the caption."""
    return tokenizer([" " + " ".join(t.split()).lower() for t in texts], add_special_tokens=False)["input_ids"]


def bag_vocabulary(tokenizer, texts: Sequence[str], min_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, idf weights) of the tokens found in at least ``min_count`` of ``texts``; idf = log(N / df)."""
    df: dict[int, int] = {}
    for ids in caption_token_ids(tokenizer, texts):
        for t in set(ids):
            df[t] = df.get(t, 0) + 1
    kept = sorted(t for t, c in df.items() if c >= min_count)
    idf = torch.tensor([math.log(len(texts) / df[t]) for t in kept], dtype=torch.float32)
    return torch.tensor(kept, dtype=torch.long), idf


def bag_of_tokens(tokenizer, texts: Sequence[str], vocabulary: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    """L2-normalised tf-idf presence vectors (len(texts), len(vocabulary)); tokens outside it are ignored."""
    column = {int(t): j for j, t in enumerate(vocabulary.tolist())}
    out = torch.zeros(len(texts), len(vocabulary))
    for i, ids in enumerate(caption_token_ids(tokenizer, texts)):
        cols = sorted({column[t] for t in ids if t in column})
        if cols:
            out[i, cols] = idf[cols]
    return F.normalize(out, dim=-1)


@dataclass
class TextSide:
    """How text states become unit vectors: centre, normalise, remove the top ``components`` common
    directions, normalise again. The states are an LLM's pooled hidden states (``token_weight``, optional,
    weights the pooling: see :func:`sif_weights`), or, with a ``vocabulary``, tf-idf bags of tokens
    (:func:`bag_of_tokens`, ``token_weight`` then holds the idf of each vocabulary entry; no LLM runs).
    With a ``projection`` (a CCA head, see ``train.stage0.probe``), the unit vector is then centred on
    ``projection_mean``, projected to the shared space and normalised once more."""

    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (k, D) orthonormal rows; k may be 0
    token_weight: torch.Tensor | None = None  # (vocab,), or (D,) idf with a vocabulary
    projection: torch.Tensor | None = None  # (D, E)
    projection_mean: torch.Tensor | None = None  # (D,)
    vocabulary: torch.Tensor | None = None  # (D,) token ids of a bag-of-tokens side

    @classmethod
    def bag(cls, tokenizer, texts: Sequence[str], min_count: int = 3) -> "TextSide":
        """A bag-of-tokens side with the vocabulary of (training) ``texts``: its unit vectors are the bags."""
        vocabulary, idf = bag_vocabulary(tokenizer, texts, min_count)
        return cls(torch.zeros(len(vocabulary)), torch.empty(0, len(vocabulary)), idf, vocabulary=vocabulary)

    def states(self, llm, tokenizer, texts: Sequence[str], layer: int, batch_size: int = 64) -> torch.Tensor:
        """What :meth:`unit` takes: bags of tokens, or the LLM's pooled ``hidden_states[layer]``."""
        if self.vocabulary is not None:
            return bag_of_tokens(tokenizer, texts, self.vocabulary, self.token_weight)
        return embed_texts(llm, tokenizer, texts, layer, batch_size, token_weight=self.token_weight)

    @classmethod
    def fit(cls, states: torch.Tensor, remove_components: int = 0,
            token_weight: torch.Tensor | None = None) -> "TextSide":
        """Fit the centring and the common directions on (training) text states."""
        mean = states.float().mean(0)
        unit = F.normalize(states.float() - mean, dim=-1)
        comps = torch.empty(0, unit.shape[1])
        if remove_components:
            comps = torch.linalg.svd(unit - unit.mean(0), full_matrices=False)[2][:remove_components]
        return cls(mean, comps.contiguous(), token_weight)

    def unit(self, states: torch.Tensor) -> torch.Tensor:
        x = F.normalize(states.float() - self.mean, dim=-1)
        if len(self.components):
            x = F.normalize(x - (x @ self.components.T) @ self.components, dim=-1)
        if self.projection is not None:
            x = F.normalize((x - self.projection_mean) @ self.projection, dim=-1)
        return x

    def with_projection(self, mean: torch.Tensor, projection: torch.Tensor) -> "TextSide":
        return TextSide(self.mean, self.components, self.token_weight, projection.float(), mean.float(),
                        self.vocabulary)

    @property
    def dim(self) -> int:
        """Width of the unit vectors."""
        return int(self.projection.shape[1] if self.projection is not None else self.mean.shape[0])

    def embed(self, llm, tokenizer, texts: Sequence[str], layer: int, batch_size: int = 64) -> torch.Tensor:
        """Unit text vectors for ``texts`` (``llm`` may be ``None`` for a bag-of-tokens side)."""
        return self.unit(self.states(llm, tokenizer, texts, layer, batch_size))

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        tensors = {"mean": self.mean.float().contiguous(), "components": self.components.float().contiguous()}
        if self.token_weight is not None:
            tensors["token_weight"] = self.token_weight.float().contiguous()
        if self.projection is not None:
            tensors["projection"] = self.projection.float().contiguous()
            tensors["projection_mean"] = self.projection_mean.float().contiguous()
        if self.vocabulary is not None:
            tensors["vocabulary"] = self.vocabulary.long().contiguous()
        save_file(tensors, str(Path(folder, TEXT_FILE)))

    @classmethod
    def load(cls, folder: str | os.PathLike, spec: "RetrievalSpec") -> "TextSide":
        """From ``retrieval_text.safetensors``; folders without it use ``spec.text_mean`` (plain mean pooling)."""
        path = Path(folder, TEXT_FILE)
        if path.is_file():
            from safetensors.torch import load_file

            t = load_file(str(path))
            return cls(t["mean"], t["components"], t.get("token_weight"), t.get("projection"), t.get("projection_mean"),
                       t.get("vocabulary"))
        mean = torch.tensor(spec.text_mean) if spec.text_mean is not None else torch.zeros(spec.embed_dim)
        return cls(mean, torch.empty(0, spec.embed_dim))


# ---------------------------------------------------------------------------------------------- image side
@dataclass
class RetrievalSpec:
    """How a stage-0 tower folder embeds images and texts into one space."""

    text_model: str  # registered LLM name or folder whose hidden states are the text side
    text_layer: int  # index into output_hidden_states
    embed_dim: int  # width of the shared space (the LLM hidden size)
    text_mean: list[float] | None = None  # older folders: centring (newer ones keep it in TEXT_FILE)
    logit_scale: float = 1.0
    text_pooling: str = "mean"  # "mean", "sif" (token-weighted mean; weights in TEXT_FILE) or "bag" (of tokens)
    head: str = "contrastive"  # how the image head was fitted: "contrastive" (trained), "ridge" or "cca"
    image_features: str = "pooled"  # what the image head reads: see IMAGE_FEATURES
    flip_average: bool = False  # average the features of the image and its mirror image

    def __post_init__(self):
        if self.image_features not in IMAGE_FEATURES:
            raise ValueError(f"unknown image_features {self.image_features!r}; expected one of {IMAGE_FEATURES}")

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, SPEC_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RetrievalSpec":
        path = Path(folder, SPEC_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {SPEC_FILE}: not a stage-0 tower folder with a retrieval head")
        return cls(**json.loads(path.read_text()))


# "pooled": the tower's pooled output; "pooled+means": that, then the mean patch token of the last layer and of
# the one before it (the layer the projector reads), concatenated.
IMAGE_FEATURES = ("pooled", "pooled+means")


def feature_width(hidden_size: int, kind: str) -> int:
    return hidden_size * (3 if kind == "pooled+means" else 1)


@torch.no_grad()
def image_features(tower, pixels: torch.Tensor, kind: str = "pooled", flip_average: bool = False) -> torch.Tensor:
    """float32 features (N, :func:`feature_width`) of preprocessed pixels, as a retrieval head reads them."""
    dtype = next(tower.parameters()).dtype

    def one(x: torch.Tensor) -> torch.Tensor:
        out = tower(pixel_values=x.to(dtype), output_hidden_states=kind == "pooled+means")
        if kind == "pooled":
            return out.pooler_output.float()
        return torch.cat([out.pooler_output, out.last_hidden_state[:, 1:].mean(1),
                          out.hidden_states[-2][:, 1:].mean(1)], dim=1).float()

    feats = one(pixels)
    return (feats + one(pixels.flip(-1))) / 2 if flip_average else feats


class ImageHead(torch.nn.Module):
    """Linear map from the tower's features (see :func:`image_features`) to the retrieval space."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(in_dim, out_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(pooled), dim=-1)


def load_retrieval_tower(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(tower, head, spec, preprocessing) from a stage-0 tower folder (its text side: ``TextSide.load``)."""
    from safetensors.torch import load_file

    from vlm.compose import load_vision

    spec = RetrievalSpec.load(folder)
    tower, preprocessing = load_vision(str(folder), dtype)
    head = ImageHead(feature_width(tower.config.hidden_size, spec.image_features), spec.embed_dim)
    head.load_state_dict(load_file(str(Path(folder, HEAD_FILE))))
    return tower.eval(), head.to(dtype).eval(), spec, preprocessing


def preprocess_images(images, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) normalised float tensor, as the llava processor does for square
    images (bicubic resize; non-square images are padded to square with the mean colour first)."""
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
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def embed_pixels(tower, head: ImageHead, pixels: torch.Tensor, batch_size: int = 128,
                 spec: RetrievalSpec | None = None) -> torch.Tensor:
    """Normalised image embeddings (N, embed_dim) from preprocessed pixel values (features as ``spec`` says;
    default: the pooled output)."""
    outs = []
    kind, flip = (spec.image_features, spec.flip_average) if spec is not None else ("pooled", False)
    dtype = next(head.parameters()).dtype
    for start in range(0, len(pixels), batch_size):
        feats = image_features(tower, pixels[start:start + batch_size], kind, flip)
        outs.append(head(feats.to(dtype)).float())
    return torch.cat(outs) if outs else torch.empty(0, head.proj.out_features)
