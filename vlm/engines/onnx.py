"""The LLM of a loaded VLM on ONNX Runtime: the stock transformers decoder exported once, then greedy decoding.

Contract
- :func:`export` writes the language model of a loaded llava ``model`` -- transformers' own
  ``model.model.language_model`` (e.g. ``LlamaModel``) followed by ``model.lm_head`` -- as one ONNX graph
  ``llm.onnx`` under ``cache_dir()/onnx/<key>/`` and returns that folder. Nothing is re-implemented: the graph
  is a trace (``torch.onnx.export(dynamo=False)``) of the stock modules' forward; :class:`KVWrapper` only turns
  the flat past key/value inputs into a ``transformers.DynamicCache`` and the updated cache back into flat
  outputs, and keeps the last position's logits and every new position's final hidden state. ``key`` hashes the LLM's weights and config, the torch and
  transformers versions (the traced code) and :data:`EXPORT_VERSION`, so a retrained checkpoint or another
  transformers gets its own folder and an unchanged one is exported once.
- Graph inputs: ``inputs_embeds`` [B, n, H] float32, ``attention_mask`` [B, past+n] int64, ``position_ids``
  [B, n] int64, ``past.<i>.key`` / ``past.<i>.value`` [B, kv_heads, past, head_dim] per layer (``past`` may be
  0). Outputs: ``logits`` [B, V] (last position), ``hidden`` [B, n, H] (the decoder's output at every new
  position, before ``lm_head``), ``present.<i>.key`` / ``present.<i>.value`` [B, kv_heads,
  past+n, head_dim]. The trace is made with a left-padded example, a non-empty past and n > 1, so the
  branches transformers takes at trace time (materialised padding mask, no ``is_causal`` shortcut, cache
  concatenation) are the general ones; the decode step (n = 1) runs the same graph.
- :class:`OrtDecoder` runs it, one step at a time: ``state = decoder.prefill(batch)`` on a prepared batch of
  ``VLM.prepare`` (``input_ids``, ``attention_mask``, ``pixel_values``; left-padded rows allowed) gives
  ``state.logits`` [B, V] (numpy float32, nothing suppressed); ``decoder.step(state, token_ids)`` feeds one
  token per row and returns the next logits; ``decoder.extend(state, ids)`` feeds several tokens of a single
  row at once and returns the logits after each (the earlier ones from ``hidden`` and the model's ``lm_head``
  in torch), ``decoder.truncate(state, n)`` drops the last ``n`` of them again (a rejected draft, see
  :mod:`vlm.engines.loop`). :mod:`vlm.engines.loop` turns that into ``model.generate``'s
  answers (logits processors, sampling, stopping); ``VLM`` uses it when loaded with the ``onnx`` engine lever.
  The vision tower, projector and the merge of image features into the embeddings run in torch on ``model``
  (:func:`embed_prompt`, stock ``get_image_features`` + ``get_placeholder_mask``, so the vision-feature cache
  lever applies); only the decoder runs on ONNX Runtime.
- The export cache keeps the :data:`KEEP` most recently used exports and deletes older ones.
- Float32 throughout; logits differ from torch's by float rounding only, so greedy answers agree except
  where two tokens nearly tie (``python -m vlm.bench.onnx_engine`` measures it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("vlm")

KEEP = 4  # exports kept under cache_dir() (most recently used first)
EXPORT_VERSION = "2"  # bump when the exported graph changes: old cache folders are then not reused
GRAPH = "llm.onnx"
INPUTS = ("inputs_embeds", "attention_mask", "position_ids")
OUTPUTS = ("logits", "hidden")


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
    returns ``(logits, hidden, *present)``. Only adapts inputs and outputs; all the model math is transformers'."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.language_model, self.lm_head = language_model, lm_head

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(list(zip(past[0::2], past[1::2])), config=self.language_model.config)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, cache=cache, use_cache=True)
        logits = self.lm_head(out.last_hidden_state[:, -1, :])
        return (logits, out.last_hidden_state, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])


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
    cached = folder is None
    folder = Path(folder) if folder else cache_dir() / checkpoint_key(model)
    if (folder / GRAPH).exists() and (folder / "export.json").exists() and not force:
        if cached:
            os.utime(folder)  # most recently used: kept by prune()
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
            "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"},
            "hidden": {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{GRAPH}.{os.getpid()}.tmp"  # processes exporting the same checkpoint don't collide
    started = time.perf_counter()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the branches fixed by the general example
        torch.onnx.export(module, example, str(tmp), dynamo=False, opset_version=17,
                          input_names=[*INPUTS, *past_names], output_names=[*OUTPUTS, *present_names],
                          dynamic_axes=axes)
    tmp.replace(folder / GRAPH)
    info = {"export_version": EXPORT_VERSION, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
            "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
            "model_type": config.model_type, "seconds": round(time.perf_counter() - started, 1)}
    (folder / "export.json").write_text(json.dumps(info, indent=1))
    log.info("exported the LLM to ONNX in %.1f s: %s", info["seconds"], folder)
    if cached:
        prune()
    return folder


def prune(keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` most recently used exports under :func:`cache_dir`; returns those deleted."""
    root = cache_dir()
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True) \
        if root.is_dir() else []
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed an old ONNX export: %s", old)
    return folders[keep:]


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


class PrefixKV:
    """The KV of the last single prompt's text before its first image (system prompt, chat header), reused by the
    next single prompt that starts the same way (at least ``min_tokens``); ``hits`` / ``misses`` count lookups.
    Image placeholder ids are never part of a prefix (they are the same for every image)."""

    def __init__(self, image_token_id: int, min_tokens: int = 4):
        self.image_token_id, self.min_tokens = image_token_id, min_tokens
        self.entry: tuple[list[int], dict] | None = None  # (ids, KV per name), replaced as one object
        self.hits = self.misses = 0

    def limit(self, ids: list[int]) -> int:
        """How many leading ids may be shared: up to the first image, else all but the last (it must run)."""
        return ids.index(self.image_token_id) if self.image_token_id in ids else len(ids) - 1

    def lookup(self, ids: list[int]) -> tuple[int, dict | None]:
        """``(n, KV of the first n ids)`` shared with the stored prefix, or ``(0, None)``."""
        entry, limit, shared = self.entry, self.limit(ids), 0
        if entry is not None:
            for a, b in zip(entry[0], ids[:limit]):
                if a != b:
                    break
                shared += 1
        if shared < self.min_tokens:
            self.misses += 1
            return 0, None
        self.hits += 1
        return shared, {name: kv[:, :, :shared] for name, kv in entry[1].items()}

    def store(self, ids: list[int], present: dict) -> None:
        limit = self.limit(ids)
        if limit >= self.min_tokens:  # views: the KV arrays of a finished run are never written again
            self.entry = (ids[:limit], {name: kv[:, :, :limit] for name, kv in present.items()})


@dataclass
class DecodeState:
    """One request's decoding state on :class:`OrtDecoder`: the mask, last positions, KV cache, and the
    logits [B, V] of the next token (float32, nothing suppressed)."""

    mask: np.ndarray
    positions: np.ndarray
    past: dict
    logits: np.ndarray


def ort_session(path: Path, threads: int | None = None, optimization: str = "all"):
    """An ONNX Runtime CPU session. ``threads``: intra-op threads (None: ORT's default); ``optimization``: graph
    optimisation level name (``"all"``, ``"extended"``, ``"basic"``, ``"disable"``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtLLM:
    """``llm.onnx`` of an export folder on ONNX Runtime, one step at a time (see the module docstring).
    Subclasses say how a prepared batch becomes input embeddings (:meth:`embed_prompt`); ``embedding`` is the
    token embedding table [V, H] (float32) that decode steps look up; ``prefix``: reuse a single prompt's
    leading text KV (:class:`PrefixKV`)."""

    def __init__(self, folder: Path, embedding: np.ndarray, image_token_id: int, threads: int | None = None,
                 optimization: str = "all", prefix: bool = False, head: nn.Linear | None = None):
        self.session = ort_session(folder / GRAPH, threads, optimization)
        self._setup(folder, embedding)
        self.prefix = PrefixKV(image_token_id) if prefix else None
        self.head = head if "hidden" in {o.name for o in self.session.get_outputs()} else None

    @property
    def can_extend(self) -> bool:
        """Whether :meth:`extend` works: the graph gives hidden states and the ``lm_head`` is at hand."""
        return self.head is not None

    def _setup(self, folder: Path, embedding: np.ndarray) -> None:
        """What any runner of ``llm.onnx`` needs besides its session: shapes and the embedding table."""
        self.folder, self.embedding = folder, embedding
        info = json.loads((folder / "export.json").read_text())
        self.layers, self.kv_heads, self.head_dim = info["layers"], info["kv_heads"], info["head_dim"]
        self.past_names, self.present_names = kv_names(self.layers), kv_names(self.layers, "present")

    def embed_prompt(self, batch) -> np.ndarray:
        """[B, n, H] float32 input embeddings of a prepared batch, image features in place of image tokens."""
        raise NotImplementedError

    def _run(self, state_past: dict, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             hidden: bool = False):
        feed = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **state_past}
        names = ["logits", *(["hidden"] if hidden else []), *self.present_names]
        outs = self.session.run(names, feed)
        logits, present = outs[0], dict(zip(self.past_names, outs[len(names) - len(self.past_names):]))
        return (logits, present, outs[1]) if hidden else (logits, present)

    def prefill(self, batch) -> DecodeState:
        """Run the prompt of a prepared batch (left-padded rows allowed); the state holds the next logits. With
        ``prefix`` on, a single prompt starts from the stored KV of the text it shares with the last one."""
        embeds = self.embed_prompt(batch)
        mask = batch["attention_mask"].numpy().astype(np.int64)
        positions = np.cumsum(mask, axis=1) - 1
        positions[mask == 0] = 1  # what transformers' generate gives padded positions
        rows = embeds.shape[0]
        ids = batch["input_ids"][0].tolist() if rows == 1 and self.prefix is not None else None
        start, past = (0, None) if ids is None else self.prefix.lookup(ids)
        if past is None:
            past = {n: np.zeros((rows, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}
        logits, present = self._run(past, embeds[:, start:], mask, positions[:, start:])
        if ids is not None:
            self.prefix.store(ids, present)
        return DecodeState(mask, positions[:, -1:], present, logits)

    def step(self, state: DecodeState, token_ids) -> np.ndarray:
        """Feed one token per row; updates ``state`` and returns the next logits [B, V]."""
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        state.mask = np.concatenate([state.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        state.positions = state.positions + 1
        state.logits, state.past = self._run(state.past, self.embedding[tokens][:, None, :], state.mask,
                                             state.positions)
        return state.logits

    def extend(self, state: DecodeState, token_ids) -> np.ndarray:
        """Feed several tokens of a single row at once; returns the logits [n, V] after each of them (the last
        is also ``state.logits``). Needs :attr:`can_extend`."""
        if not self.can_extend:
            raise RuntimeError("this engine cannot feed several tokens at once (no hidden output or lm_head)")
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if state.mask.shape[0] != 1 or n == 0:
            raise ValueError("extend feeds one or more tokens of a single row")
        state.mask = np.concatenate([state.mask, np.ones((1, n), np.int64)], axis=1)
        positions = state.positions[:, -1:] + np.arange(1, n + 1)
        logits, state.past, hidden = self._run(state.past, self.embedding[tokens][None], state.mask, positions,
                                               hidden=True)
        state.positions, state.logits = positions[:, -1:], logits
        if n == 1:
            return logits
        with torch.inference_mode():
            earlier = self.head(torch.from_numpy(hidden[0, :-1])).float().numpy()
        return np.concatenate([earlier, logits], axis=0)

    def truncate(self, state: DecodeState, n: int) -> None:
        """Forget the last ``n`` fed tokens (their KV, mask and position); ``state.logits`` is then stale."""
        if n <= 0:
            return
        keep = state.mask.shape[1] - n
        state.mask = state.mask[:, :keep]
        state.positions = state.positions - n
        state.past = {name: np.ascontiguousarray(kv[:, :, :keep]) for name, kv in state.past.items()}


class OrtDecoder(OrtLLM):
    """The LLM of a loaded llava ``model`` on ONNX Runtime: exported once (:func:`export`, cached, or into
    ``folder``); the tower and projector run in torch on ``model`` (:func:`embed_prompt`)."""

    def __init__(self, model, threads: int | None = None, folder: Path | None = None, optimization: str = "all",
                 prefix: bool = False):
        self.model = model
        table = model.model.get_input_embeddings().weight.detach().float().numpy()  # no copy
        super().__init__(export(model, folder), table, model.config.image_token_id, threads, optimization, prefix,
                         head=model.lm_head)

    def embed_prompt(self, batch) -> np.ndarray:
        return embed_prompt(self.model, batch).float().numpy()
