"""CPU inference optimisations applied to a loaded :class:`~vlm.api.VLM`, each one switchable.

``apply(vlm, InferenceOptions(...))`` changes the model in place and returns it. Every lever is measured
by ``vlm bench`` against stock ``LlavaForConditionalGeneration.generate`` in float32 (see vlm/bench/README.md);
:data:`DEFAULT` holds the output-preserving levers, :data:`FAST` the fastest measured path.
``VLM.optimize(...)`` is the API entry point.

Levers
- ``engine``: what runs the LLM's decoding. ``"torch"`` (transformers' ``generate``, the reference) or
  ``"onnx"``: the stock transformers decoder exported once to ONNX and run on ONNX Runtime
  (:mod:`vlm.engines.onnx`, :mod:`vlm.engines.loop`; the same answers, about 2x the decode speed here).
  Requests the loop can't reproduce (beam search) still run on transformers. Float32 weights only: the
  weight-changing levers (bf16, int8, compile) are torch levers. If the engine can't start (no onnxruntime,
  an LLM the export refuses), a warning is logged and the VLM generates with transformers.
- ``dtype``: ``"bfloat16"`` runs everything in bf16 (AMX matmuls: faster prefill, outputs drift).
- ``int8``: dynamic int8 quantisation of the LLM's linear layers and the LM head (``torch.ao`` dynamic quant:
  int8 weights, activations quantised per call). Decode reads 4x fewer weight bytes. float32 path only.
- ``attention``: ``"sdpa"`` (fused scaled-dot-product attention) or ``"eager"``.
- ``threads``: ``torch.set_num_threads`` (process-wide); ``None`` leaves torch's default.
- ``compile``: static KV cache + ``torch.compile`` of the decode step inside ``generate``.
- ``reuse_vision``: run the vision tower once per distinct image (LRU over pixel hashes), so later chat
  turns about the same image skip it.
- ``prefix_cache``: keep the KV cache of the prompt text before its first image (system prompt and chat
  header) and start the next single-prompt generation from a copy when its prompt begins the same way (on
  either engine: ``PromptPrefixCache`` for torch, ``vlm.engines.onnx.PrefixKV`` for onnx).
- ``image_pool``: average-pool the image-token grid to ``image_pool x image_pool`` tokens (``0`` = off).
  Changes what the LLM sees: only for models trained or checked with it (report its quality cost).
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

log = logging.getLogger("vlm")
_ATTENTION = ("sdpa", "eager")
_ENGINES = ("torch", "onnx")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _torch_only(dtype: str = "float32", int8: bool = False, compile: bool = False, **_) -> bool:
    """Whether these lever values exist only on the torch engine (they change the weights it runs)."""
    return dtype != "float32" or bool(int8) or bool(compile)


@dataclass
class InferenceOptions:
    """Which optimisations to apply. The defaults change nothing (the float32 reference path)."""

    engine: str = "torch"
    dtype: str = "float32"
    int8: bool = False
    attention: str = "sdpa"
    threads: int | None = None
    compile: bool = False
    reuse_vision: bool = False
    vision_cache_size: int = 64
    prefix_cache: bool = False
    image_pool: int = 0

    def __post_init__(self) -> None:
        if self.engine not in _ENGINES:
            raise ValueError(f"engine must be one of {list(_ENGINES)}, got {self.engine!r}")
        if self.engine != "torch" and _torch_only(self.dtype, self.int8, self.compile):
            raise ValueError(f"the {self.engine} engine runs float32 weights; bf16, int8 and compile are "
                             "levers of the torch engine")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.int8 and self.dtype != "float32":
            raise ValueError("int8 dynamic quantisation needs dtype='float32' (activations stay float32)")
        if self.attention not in _ATTENTION:
            raise ValueError(f"attention must be one of {list(_ATTENTION)}, got {self.attention!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.vision_cache_size < 1:
            raise ValueError(f"vision_cache_size must be >= 1, got {self.vision_cache_size}")
        if self.image_pool < 0:
            raise ValueError(f"image_pool must be >= 0 (0 = off), got {self.image_pool}")

    def preserves_weights(self) -> bool:
        """True when only output-preserving levers are set (caches, threads, attention kernel)."""
        return self.dtype == "float32" and not (self.int8 or self.compile or self.image_pool)

    def label(self) -> str:
        """A short name for tables, e.g. ``int8+reuse_vision``."""
        parts = [] if self.engine == "torch" else [self.engine]
        parts += [] if self.dtype == "float32" else [self.dtype]
        parts += ["int8"] if self.int8 else []
        parts += [] if self.attention == "sdpa" else [f"attn={self.attention}"]
        parts += [] if self.threads is None else [f"threads={self.threads}"]
        parts += ["compile"] if self.compile else []
        parts += ["reuse_vision"] if self.reuse_vision else []
        parts += ["prefix_cache"] if self.prefix_cache else []
        parts += [f"pool{self.image_pool}"] if self.image_pool else []
        return "+".join(parts) or "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes) -> "InferenceOptions":
        return replace(self, **changes)

    def with_levers(self, **levers) -> "InferenceOptions":
        """These options with ``levers`` changed; a weight-changing lever (bf16, int8, compile) selects the torch
        engine unless ``engine`` is given too."""
        if _torch_only(**levers):
            levers.setdefault("engine", "torch")
        return replace(self, **levers)


# Output-preserving levers (greedy answers identical to stock float32 transformers, checked by
# tests/test_engine_onnx.py on real weights; the ONNX engine's logits differ by float rounding only).
DEFAULT = InferenceOptions(engine="onnx", reuse_vision=True, prefix_cache=True)
# The fastest measured path on this CPU (vlm/bench/README.md); int8 changes answers, see the agreement column.
FAST = InferenceOptions(int8=True, reuse_vision=True, prefix_cache=True)


LEVER_TOKENS = "default, fast, onnx, torch, float32, bf16, int8, eager, tN (threads), compile, reuse, prefix, poolN"


def parse_levers(spec: str) -> InferenceOptions:
    """``"int8+reuse+t1"`` -> ``InferenceOptions`` (tokens: :data:`LEVER_TOKENS`, joined with ``+``). The torch
    levers that change weights (bf16, int8, compile) select the torch engine, so ``default+int8`` is the
    default caches on transformers with int8 weights."""
    opts = InferenceOptions()
    for tok in filter(None, spec.strip().split("+")):
        if tok in ("default", "fast"):
            opts = (DEFAULT if tok == "default" else FAST).with_(threads=opts.threads)
        elif tok in _ENGINES:
            opts = opts.with_(engine=tok)
        elif tok in ("float32", "fp32"):
            opts = opts.with_(dtype="float32")
        elif tok in ("bf16", "bfloat16"):
            opts = opts.with_levers(dtype="bfloat16")
        elif tok == "int8":
            opts = opts.with_levers(int8=True)
        elif tok == "eager":
            opts = opts.with_(attention="eager")
        elif tok == "compile":
            opts = opts.with_levers(compile=True)
        elif tok == "reuse":
            opts = opts.with_(reuse_vision=True)
        elif tok == "prefix":
            opts = opts.with_(prefix_cache=True)
        elif tok.startswith("pool") and tok[4:].isdigit():
            opts = opts.with_(image_pool=int(tok[4:]))
        elif tok.startswith("t") and tok[1:].isdigit():
            opts = opts.with_(threads=int(tok[1:]))
        else:
            raise ValueError(f"unknown lever {tok!r} in {spec!r}; use {LEVER_TOKENS}, joined with '+'")
    return opts


@dataclass
class InferenceState:
    """The levers applied to a ``VLM``'s model and the caches they installed; held by the ``VLM`` (its
    ``inference`` attribute) and passed explicitly to generation. The vision cache is also the hook that
    ``LlavaModel.get_image_features`` calls on that model instance (see :class:`VisionFeatureCache`)."""

    options: InferenceOptions | None = None
    vision_cache: "VisionFeatureCache | None" = None
    prefix_cache: "PromptPrefixCache | None" = None
    engine: Any = None  # the LLM's step engine (vlm.engines.onnx.OrtDecoder) when the onnx engine runs
    engine_error: str | None = None  # why the requested engine did not start (generation then uses torch)


def apply(vlm, options: InferenceOptions | None = None):
    """Apply ``options`` to ``vlm`` in place and return it. Weight-changing levers (dtype, int8, compile,
    pooling) go on a model that has at most output-preserving ones (``VLM.load`` applies :data:`DEFAULT`)."""
    options = options or InferenceOptions()
    model, state = vlm.model, vlm.inference
    previous = state.options
    if previous is not None:  # levers on top of the output-preserving ones (e.g. those VLM.load applies)
        if not previous.preserves_weights():
            raise ValueError(f"levers that change the weights ({previous.label()}) were already applied to this "
                             "model; load a fresh one (VLM.load(..., levers=None)) to choose others")
        options = options.with_(reuse_vision=options.reuse_vision or previous.reuse_vision,
                                prefix_cache=options.prefix_cache or previous.prefix_cache)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    model.set_attn_implementation(options.attention)
    if options.dtype != "float32":
        model.to(_DTYPES[options.dtype])
    if options.int8:
        quantise_llm_int8(model)
    if options.compile:
        enable_static_compile(model)
    if options.image_pool:
        pool_image_tokens(vlm, options.image_pool)
    if options.reuse_vision:
        if state.vision_cache is None:
            state.vision_cache = VisionFeatureCache(model.model, options.vision_cache_size)
        state.vision_cache.entries.clear()  # features of the model as it was before these levers
    if options.prefix_cache:
        if state.prefix_cache is None:
            state.prefix_cache = PromptPrefixCache(model)
        state.prefix_cache.entry = None
    if options.engine == "onnx":
        if state.engine is None:
            state.engine, state.engine_error = start_onnx_engine(model, options.threads, options.prefix_cache)
        elif options.prefix_cache and state.engine.prefix is None:
            from .engines.onnx import PrefixKV

            state.engine.prefix = PrefixKV(model.config.image_token_id)
    else:
        state.engine = state.engine_error = None
    state.options = options
    return vlm


def start_onnx_engine(model, threads: int | None, prefix: bool = False):
    """``(OrtDecoder, None)`` for ``model``'s LLM (exported once, cached), or ``(None, why)`` with a logged warning:
    a missing or failing engine never stops a model from loading; it generates with transformers instead."""
    try:
        from .engines.onnx import OrtDecoder

        return OrtDecoder(model, threads=threads, prefix=prefix), None
    except Exception as exc:  # noqa: BLE001 -- any failure falls back to the reference engine
        why = f"{type(exc).__name__}: {exc}"
        log.warning("the onnx engine did not start (%s); generating with transformers", why)
        return None, why


def quantise_llm_int8(model) -> None:
    """Dynamic int8 quantisation of every ``nn.Linear`` in the LLM and of the LM head.

    The input embedding keeps its float32 table (a tied LM head gets its own int8 copy), the vision tower and
    the projector stay float32: they run once per image, and their error would reach every image token.
    """
    if model.dtype != torch.float32:
        raise ValueError(f"int8 dynamic quantisation needs a float32 model, this one is {model.dtype}")
    import warnings

    from torch.ao.quantization import quantize_dynamic  # deprecated in favour of torchao, still in torch 2.13

    inner = model.model
    holder = nn.Module()
    holder.lm_head = model.lm_head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        inner.language_model = quantize_dynamic(inner.language_model, {nn.Linear}, dtype=torch.qint8)
        model.lm_head = quantize_dynamic(holder, {nn.Linear}, dtype=torch.qint8).lm_head
    # generate() must not re-tie the (now quantised) head to the embedding table.
    model.config.tie_word_embeddings = False
    model.config.text_config.tie_word_embeddings = False


def enable_static_compile(model) -> None:
    """Static KV cache + ``torch.compile`` of the decode step, through ``generate``'s own switches.

    transformers only auto-compiles on accelerators unless ``CompileConfig._compile_all_devices`` is set.
    The first generate call per cache length compiles (tens of seconds on CPU).
    """
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, mode="default")
    config._compile_all_devices = True
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = config


class _FeatureHook:
    """Replaces ``LlavaModel.get_image_features`` on one model instance (an object, not a closure, so
    ``copy.deepcopy`` of the model yields a hook bound to the copy)."""

    def __init__(self, inner):
        self.inner = inner
        self.previous = inner.__dict__.get("get_image_features")  # an earlier hook, or None: the class method
        inner.get_image_features = self

    def call_previous(self, **kwargs):
        if self.previous is not None:
            return self.previous(**kwargs)
        return type(self.inner).get_image_features(self.inner, **kwargs)


class VisionFeatureCache(_FeatureHook):
    """LRU of projected image features keyed by a hash of each image's pixels.

    Images already seen (same pixels, same feature layer/strategy) skip the vision tower and projector; the
    new ones of a batch are encoded together. Bypassed while gradients are enabled (training).
    """

    def __init__(self, inner, capacity: int = 64):
        super().__init__(inner)
        self.capacity = capacity
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None,
                 image_sizes=None, **kwargs):
        select = dict(vision_feature_layer=vision_feature_layer,
                      vision_feature_select_strategy=vision_feature_select_strategy)
        if image_sizes is not None or torch.is_grad_enabled():
            return self.call_previous(pixel_values=pixel_values, image_sizes=image_sizes, **select, **kwargs)
        salt = (str(vision_feature_layer), str(vision_feature_select_strategy))
        keys = [self._key(img, salt) for img in pixel_values]
        with self.lock:  # a server runs generations in several threads
            found = {k: self.entries[k] for k in keys if k in self.entries}
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        result = None
        if missing:
            result = self.call_previous(pixel_values=pixel_values[missing], **select, **kwargs)
            for i, feats in zip(missing, result.pooler_output):
                found[keys[i]] = feats.detach()
        features = [found[k] for k in keys]
        with self.lock:
            for k in keys:
                self._put(k, found[k])
        if result is None:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            result = BaseModelOutputWithPooling()
        result.pooler_output = features
        return result

    @staticmethod
    def _key(image: torch.Tensor, salt: tuple) -> tuple:
        data = image.detach().contiguous().cpu()
        digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
        return (digest, tuple(data.shape), str(data.dtype)) + salt

    def __getstate__(self):  # copy.deepcopy of a model copies its hook; a lock can't be copied
        state = dict(self.__dict__)
        state.pop("lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def _put(self, key: tuple, feats: torch.Tensor) -> None:
        self.entries[key] = feats.detach()
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class ImageTokenPool(_FeatureHook):
    """Average-pools each image's square grid of projected features to ``side x side`` tokens."""

    def __init__(self, inner, grid: int, side: int):
        super().__init__(inner)
        self.grid, self.side = grid, side

    def __call__(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs):
        out = self.call_previous(pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
                                 vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)
        g, s = self.grid, self.side
        pooled = []
        for feats in out.pooler_output:  # (grid*grid, hidden)
            grid = feats.transpose(0, 1).reshape(1, -1, g, g)
            p = nn.functional.adaptive_avg_pool2d(grid.float(), s).to(feats.dtype)
            pooled.append(p.reshape(feats.shape[-1], s * s).transpose(0, 1))
        out.pooler_output = pooled
        return out


def pool_image_tokens(vlm, side: int) -> None:
    """Average-pool each image's square token grid to ``side x side`` tokens.

    The processor is told to emit ``side**2`` ``<image>`` placeholders (via its patch size), and the model's
    ``get_image_features`` pools the projected features to match.
    """
    model, processor = vlm.model, vlm.processor
    vc = model.config.vision_config
    grid = vc.image_size // vc.patch_size
    if not 1 <= side < grid:
        raise ValueError(f"image_pool must be between 1 and {grid - 1} for a {grid}x{grid} token grid, got {side}")
    if vc.image_size % side:
        raise ValueError(f"image_pool={side} must divide the image size {vc.image_size}")
    ImageTokenPool(model.model, grid, side)
    processor.patch_size = vc.image_size // side
    model.config.image_seq_length = side * side


def weight_bytes_per_token(model) -> int:
    """Bytes of LLM weights one decode step reads: every linear (float or packed int8) plus one embedding row."""
    total = 0
    llm = model.model.language_model
    modules = list(llm.named_modules()) + [("lm_head", model.lm_head)]
    for name, module in modules:
        if isinstance(module, nn.Embedding):
            total += module.weight.shape[1] * module.weight.element_size()
            continue
        packed = getattr(module, "weight", None)
        if callable(packed):  # torch.ao dynamic quantised Linear: weight() -> quantised tensor
            w = packed()
            total += w.numel() * w.element_size()
            bias = module.bias()
            total += 0 if bias is None else bias.numel() * bias.element_size()
            continue
        for p in module.parameters(recurse=False):
            total += p.numel() * p.element_size()
    return total


def kv_bytes_per_token(model, context: int) -> int:
    """Bytes of KV cache one decode step reads at ``context`` tokens."""
    tc = model.config.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_heads = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    elem = torch.finfo(model.dtype).bits // 8
    return 2 * tc.num_hidden_layers * kv_heads * head_dim * context * elem


def cache_kwarg(model) -> str:
    """The keyword under which this transformers version's ``forward``/``generate`` take a KV cache: ``cache``
    (5.2x; ``past_key_values`` is deprecated there) or ``past_key_values`` (earlier)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class PromptPrefixCache:
    """The KV cache of the last prompt's text before its first image token (for a chat template: the system
    prompt and the user-turn header), reused by the next single-prompt generation that starts the same way.

    :meth:`past_for` returns a fresh cache holding the prompt's text before its first image (all of a
    text-only prompt but its last token), or ``None``; ``generate`` then runs only the rest of the prompt.
    The stored prefix is reused as far as it matches (at least ``min_tokens``), the rest is computed, and the
    prompt's prefix replaces the stored one. Image placeholder tokens are never part of a prefix (their ids
    are the same for every image).

    The returned cache is built from the stored key/value tensors through the cache's public constructor
    (no crop or deep copy, whose semantics change between transformers versions). The first reuse is checked
    against a fresh computation of the same tokens; if it differs, or anything in this path raises, the
    cache switches itself off with a logged warning and every later request runs uncached.
    """

    def __init__(self, model, min_tokens: int = 4):
        self.model = model
        self.min_tokens = min_tokens
        self.entry: tuple[list[int], Any] | None = None  # (token ids, DynamicCache), replaced as one object
        self.hits = 0
        self.misses = 0
        self.verified = False
        self.disabled: str | None = None  # why the cache switched itself off

    def past_for(self, input_ids: torch.Tensor):
        """A cache covering a prefix of ``input_ids`` (1-D), or ``None`` to run the whole prompt."""
        if self.disabled:
            return None
        try:
            return self._past_for(input_ids.tolist())
        except Exception as exc:  # a cache must never break a request
            self.disable(f"{type(exc).__name__}: {exc}")
            return None

    def disable(self, reason: str) -> None:
        """Switch the cache off for good (logged once); requests then run uncached."""
        if not self.disabled:
            log.warning("prompt-prefix KV cache switched off, requests run uncached: %s", reason)
        self.disabled = reason
        self.entry = None

    def _past_for(self, ids: list[int]):
        image = self.model.config.image_token_id
        limit = ids.index(image) if image in ids else len(ids) - 1  # the last token must still be run
        if limit < self.min_tokens:
            return None
        entry, shared = self.entry, 0
        if entry is not None:
            for a, b in zip(entry[0], ids[:limit]):
                if a != b:
                    break
                shared += 1
        if shared >= self.min_tokens:
            self.hits += 1
            full = entry[1] if shared == limit else self._run(ids[shared:limit], self._slice(entry[1], shared))[0]
        else:
            self.misses += 1
            full = self._run(ids[:limit])[0]
        if not self.verified:
            self._verify(ids[:limit], shared if 0 < shared < limit else limit // 2, full)
        if entry is None or full is not entry[1]:  # keep this prompt's prefix: a chat's next turn shares it
            self.entry = (ids[:limit], full)
        return self._slice(full, limit)

    def _run(self, ids: list[int], past=None):
        """Run the language model over ``ids`` (after ``past``): (the filled cache, the last hidden states)."""
        from transformers import DynamicCache

        llm = self.model.model.language_model
        cache = past if past is not None else DynamicCache(config=self.model.config.text_config)
        with torch.inference_mode():
            out = llm(input_ids=torch.tensor([ids]), use_cache=True, **{cache_kwarg(llm): cache})
        return cache, out.last_hidden_state

    @staticmethod
    def _slice(cache, length: int):
        """A new cache holding the first ``length`` positions of ``cache`` (copies: generation appends to it)."""
        from transformers import DynamicCache

        layers = [(layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone())
                  for layer in cache.layers]
        out = DynamicCache(ddp_cache_data=layers)
        if out.get_seq_length() != length:
            raise RuntimeError(f"rebuilt prefix cache holds {out.get_seq_length()} positions, expected {length}")
        return out

    def _verify(self, ids: list[int], shared: int, stored) -> None:
        """Once: the tokens after the shared prefix, run on the rebuilt cache, must give the hidden states a
        fresh run of the whole prompt gives (raises otherwise; :meth:`past_for` then disables the cache)."""
        if shared >= len(ids):
            ids = ids + [ids[-1]]  # nothing after the prefix: check one extra token
        _, reused = self._run(ids[shared:], self._slice(stored, shared))
        _, fresh = self._run(ids)
        fresh = fresh[:, shared:]
        tol = 1e-3 if reused.dtype == torch.float32 else 5e-2
        if reused.shape != fresh.shape or not torch.allclose(reused, fresh, atol=tol, rtol=tol):
            diff = (reused - fresh).abs().max().item() if reused.shape == fresh.shape else float("nan")
            raise RuntimeError(f"reused prefix disagrees with a fresh computation (max abs diff {diff:.3g})")
        self.verified = True
