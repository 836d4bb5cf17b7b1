"""Image-text retrieval helpers: recall@K and its chance level, and an LLM's pooled hidden states of captions.

:func:`recall_at_k` scores a similarity matrix (the protocol of ``vlm eval retrieval`` and of LiT's dev
selection; images are preprocessed by :func:`vlm.clip.preprocess`); :func:`embed_texts` (with :func:`sif_weights`) pools a frozen LLM's
``hidden_states[layer]`` over each caption's tokens (LiT's ``smollm2-frozen`` text side).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch


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


# ------------------------------------------------------------------------------------- LLM caption states
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
