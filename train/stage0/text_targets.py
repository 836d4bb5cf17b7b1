"""The locked text side of stage 0: the frozen LLM's (optionally token-weighted) mean-pooled hidden states
of each caption.

Computed once and cached to disk as safetensors, keyed by the data split, the LLM and the layer.
Only the decoder layers that can affect ``hidden_states[layer]`` run (see ``vlm.eval.retrieval.truncated``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vlm.eval.retrieval import embed_texts


def cache_key(texts: list[str], llm_name: str, layer: int, token_weight: torch.Tensor | None = None) -> str:
    h = hashlib.sha256()
    h.update(f"{llm_name}|{layer}|{len(texts)}".encode())
    if token_weight is not None:
        h.update(token_weight.float().numpy().tobytes())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_text_llm(llm_name: str):
    """(model, tokenizer) of the frozen text side, in bf16 (fast on AMX; cosine to fp32 > 0.998)."""
    from vlm.compose import load_llm

    model, tok = load_llm(llm_name, dtype=torch.bfloat16)
    return model.eval(), tok


def text_states(texts: list[str], llm_name: str, layer: int, cache_dir: str | Path | None,
                batch_size: int = 128, llm=None, token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """float32 (len(texts), hidden) pooled states, cached under ``cache_dir`` when given.

    ``llm``: a callable returning ``(model, tokenizer)``, called only when the states are not cached
    (default: :func:`load_text_llm`)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"text_{cache_key(texts, llm_name, layer, token_weight)}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            return load_file(str(path))["states"]
    model, tok = llm() if llm is not None else load_text_llm(llm_name)
    states = embed_texts(model, tok, texts, layer, batch_size=batch_size, token_weight=token_weight)
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"states": states.contiguous()}, str(path))
    return states
