"""The LLM of a loaded VLM on ONNX Runtime: the stock transformers decoder exported once, then greedy decoding.

Contract
- :func:`export` writes the language model of a loaded llava ``model`` -- transformers' own
  ``model.model.language_model`` (e.g. ``LlamaModel``) followed by ``model.lm_head`` -- as one ONNX graph
  ``llm.onnx`` under ``cache_dir()/onnx/<key>/`` and returns that folder. Nothing is re-implemented: the graph
  is a trace (``torch.onnx.export(dynamo=False)``) of the stock modules' forward; :class:`KVWrapper` only turns
  the flat past key/value inputs into a ``transformers.DynamicCache`` and the updated cache back into flat
  outputs, and keeps the last position's logits. ``key`` hashes the LLM's weights and config, the torch and
  transformers versions (the traced code) and :data:`EXPORT_VERSION`, so a retrained checkpoint or another
  transformers gets its own folder and an unchanged one is exported once.
- Graph inputs: ``inputs_embeds`` [B, n, H] float32, ``attention_mask`` [B, past+n] int64, ``position_ids``
  [B, n] int64, ``past.<i>.key`` / ``past.<i>.value`` [B, kv_heads, past, head_dim] per layer (``past`` may be
  0). Outputs: ``logits`` [B, V] (last position), ``present.<i>.key`` / ``present.<i>.value`` [B, kv_heads,
  past+n, head_dim]. The trace is made with a left-padded example, a non-empty past and n > 1, so the
  branches transformers takes at trace time (materialised padding mask, no ``is_causal`` shortcut, cache
  concatenation) are the general ones; the decode step (n = 1) runs the same graph.
- :class:`OrtDecoder` runs it. :meth:`OrtDecoder.generate` takes the prepared batch of
  :func:`vlm.generation.encode` / ``VLM.prepare`` (``input_ids``, ``attention_mask``, ``pixel_values``) and
  returns each row's new token ids, greedy, as stock ``model.generate`` makes them with vlm's settings
  (image token suppressed, stop at EOS, rows that stopped padded with ``pad``). For streaming or custom
  logits processing use the per-step API: ``state = decoder.prefill(batch)`` gives ``state.logits`` [B, V]
  (numpy float32, nothing suppressed), ``decoder.step(state, token_ids)`` feeds one token per row and returns
  the next logits. The vision tower, projector and the merge of image features into the embeddings run in
  torch on ``model`` (:func:`embed_prompt`, stock ``get_image_features`` + ``get_placeholder_mask``); only the
  decoder runs on ONNX Runtime. Greedy only in :meth:`generate`: sampling, beams, penalties are not handled.
- Float32 throughout; logits differ from torch's by float rounding only, so greedy answers agree except
  where two tokens nearly tie (``python -m vlm.bench.onnx_engine`` measures it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("vlm")

EXPORT_VERSION = "1"  # bump when the exported graph changes: old cache folders are then not reused
GRAPH = "llm.onnx"
INPUTS = ("inputs_embeds", "attention_mask", "position_ids")


def cache_dir() -> Path:
    from vlm.registry import cache_dir as root

    return root() / "onnx"


def _llm_parts(model):
    """``(language_model, lm_head, text_config)`` of a llava model."""
    return model.model.language_model, model.lm_head, model.config.text_config


def _kv_shape(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a decoder config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


def kv_names(layers: int, kind: str = "past") -> list[str]:
    return [f"{kind}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class KVWrapper(nn.Module):
    """Flat tensors in and out around the stock decoder: ``past`` (key, value per layer) -> ``DynamicCache``
    -> ``language_model(inputs_embeds=..., cache=..., use_cache=True)`` -> ``lm_head`` on the last position;
    returns ``(logits, *present)``. Only adapts inputs and outputs; all the model math is transformers'."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.language_model, self.lm_head = language_model, lm_head

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(list(zip(past[0::2], past[1::2])), config=self.language_model.config)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, cache=cache, use_cache=True)
        logits = self.lm_head(out.last_hidden_state[:, -1, :])
        return (logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])


def checkpoint_key(model) -> str:
    """A hash of the LLM's weights and config, torch and transformers versions and the export version."""
    import transformers

    lm, head, config = _llm_parts(model)
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{EXPORT_VERSION}|{torch.__version__}|{transformers.__version__}|"
                  f"{config.to_json_string(use_diff=False)}".encode())
    tensors = dict(lm.state_dict())
    tensors["lm_head.weight"] = head.weight
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.dtype != torch.float32:
            raise ValueError(f"export needs float32 LLM weights, {name} is {t.dtype}")
        digest.update(name.encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def export(model, folder: Path | None = None, force: bool = False) -> Path:
    """Export the LLM of llava ``model`` (float32) to ``folder`` (default ``cache_dir()/<checkpoint key>``)
    unless it is there already; returns the folder (``llm.onnx`` and ``export.json``)."""
    folder = Path(folder) if folder else cache_dir() / checkpoint_key(model)
    if (folder / GRAPH).exists() and (folder / "export.json").exists() and not force:
        return folder
    lm, head, config = _llm_parts(model)
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer).__name__ for layer in DynamicCache(config=lm.config).layers}
    if kinds != {DynamicLayer.__name__}:  # sliding windows, KV sharing: data-dependent cache code, not traced here
        raise ValueError(f"this export handles full-attention decoders only (cache layers: {sorted(kinds)})")
    layers, kv_heads, head_dim = _kv_shape(config)
    module = KVWrapper(lm, head).eval()
    past_names, present_names = kv_names(layers), kv_names(layers, "present")
    # general example: batch 2, left padding in row 0, a past of 2, 3 new positions
    b, n, past = 2, 3, 2
    mask = torch.ones(b, past + n, dtype=torch.int64)
    mask[0, 0] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(b, n, config.hidden_size, generator=gen) * 0.02, mask, positions,
               *[torch.randn(b, kv_heads, past, head_dim, generator=gen) for _ in past_names])
    axes = {"inputs_embeds": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"}}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (GRAPH + ".tmp")
    started = time.perf_counter()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the branches fixed by the general example
        torch.onnx.export(module, example, str(tmp), dynamo=False, opset_version=17,
                          input_names=[*INPUTS, *past_names], output_names=["logits", *present_names],
                          dynamic_axes=axes)
    tmp.replace(folder / GRAPH)
    info = {"export_version": EXPORT_VERSION, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
            "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
            "model_type": config.model_type, "seconds": round(time.perf_counter() - started, 1)}
    (folder / "export.json").write_text(json.dumps(info, indent=1))
    log.info("exported the LLM to ONNX in %.1f s: %s", info["seconds"], folder)
    return folder


def embed_prompt(model, batch) -> torch.Tensor:
    """The llava-merged input embeddings of a prepared batch (text embeddings, image features in place of
    the image tokens), computed in torch on ``model`` with its own methods, as ``LlavaModel.forward`` does."""
    inner, cfg = model.model, model.config
    with torch.inference_mode():
        ids = batch["input_ids"]
        embeds = inner.get_input_embeddings()(ids)
        if batch.get("pixel_values") is not None:
            out = inner.get_image_features(pixel_values=batch["pixel_values"],
                                           vision_feature_layer=cfg.vision_feature_layer,
                                           vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                                           return_dict=True)
            feats = torch.cat(list(out.pooler_output), dim=0).to(embeds.dtype)
            mask = inner.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=feats)
            embeds = embeds.masked_scatter(mask, feats)
    return embeds


@dataclass
class DecodeState:
    """One request's decoding state on :class:`OrtDecoder`: the mask, last positions, KV cache, and the
    logits [B, V] of the next token (float32, nothing suppressed)."""

    mask: np.ndarray
    positions: np.ndarray
    past: dict
    logits: np.ndarray


class OrtDecoder:
    """The exported LLM of one llava ``model`` on ONNX Runtime (see the module docstring). ``threads``: ORT
    intra-op threads (None: ORT's default); ``optimization``: ORT graph optimisation level name
    (``"all"``, ``"extended"``, ``"basic"``, ``"disable"``)."""

    def __init__(self, model, threads: int | None = None, folder: Path | None = None, optimization: str = "all"):
        import onnxruntime as ort

        folder = export(model, folder)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        self.session = ort.InferenceSession(str(folder / GRAPH), so, providers=["CPUExecutionProvider"])
        self._setup(model, folder)

    def _setup(self, model, folder: Path) -> None:
        """What any runner of ``llm.onnx`` needs besides its session: shapes, embedding table, special ids."""
        self.model, self.folder = model, folder
        info = json.loads((folder / "export.json").read_text())
        self.layers, self.kv_heads, self.head_dim = info["layers"], info["kv_heads"], info["head_dim"]
        self.past_names = kv_names(self.layers)
        self.embedding = model.model.get_input_embeddings().weight.detach().float().numpy()  # no copy
        gen = model.generation_config
        eos = gen.eos_token_id
        self.eos = sorted(set(eos if isinstance(eos, (list, tuple)) else [eos]))
        self.pad = gen.pad_token_id if gen.pad_token_id is not None else self.eos[0]
        self.suppress = [model.config.image_token_id]

    def _run(self, state_past: dict, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray):
        feed = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **state_past}
        logits, *present = self.session.run(None, feed)
        return logits, dict(zip(self.past_names, present))

    def prefill(self, batch) -> DecodeState:
        """Run the prompt of a prepared batch (left-padded rows allowed); the state holds the next logits."""
        embeds = embed_prompt(self.model, batch).float().numpy()
        mask = batch["attention_mask"].numpy().astype(np.int64)
        positions = np.cumsum(mask, axis=1) - 1
        positions[mask == 0] = 1  # what transformers' generate gives padded positions
        rows = embeds.shape[0]
        empty = {n: np.zeros((rows, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}
        logits, past = self._run(empty, embeds, mask, positions)
        return DecodeState(mask, positions[:, -1:], past, logits)

    def step(self, state: DecodeState, token_ids) -> np.ndarray:
        """Feed one token per row; updates ``state`` and returns the next logits [B, V]."""
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        state.mask = np.concatenate([state.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        state.positions = state.positions + 1
        state.logits, state.past = self._run(state.past, self.embedding[tokens][:, None, :], state.mask,
                                             state.positions)
        return state.logits

    def generate(self, batch, max_new_tokens: int, on_token=None) -> list[list[int]]:
        """Greedy new tokens of each row of a prepared batch (EOS included when produced; rows that stopped
        earlier padded with ``pad``, as ``model.generate`` pads). ``on_token(step)`` is called after each step."""
        state = self.prefill(batch)
        rows = state.logits.shape[0]
        out: list[list[int]] = [[] for _ in range(rows)]
        done = np.zeros(rows, dtype=bool)
        for i in range(max_new_tokens):
            logits = state.logits
            logits[:, self.suppress] = -np.inf
            tokens = np.where(done, self.pad, logits.argmax(axis=-1))
            for r in range(rows):
                out[r].append(int(tokens[r]))
            done |= np.isin(tokens, self.eos)
            if on_token is not None:
                on_token(i)
            if done.all() or i == max_new_tokens - 1:
                break
            self.step(state, tokens)
        return out

    def answers(self, processor, batch, max_new_tokens: int) -> list[str]:
        """Decoded answers, as :func:`vlm.generation.generate` returns them (stripped, special tokens skipped)."""
        tokens = self.generate(batch, max_new_tokens)
        return [t.strip() for t in processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
