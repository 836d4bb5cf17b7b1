"""The Python API: ``VLM.build / load / save / ask / ask_batch / stream / chat / info``, and the CLIP's uses
``embed_images / embed_texts / classify / ask_index`` (:mod:`vlm.clip`, :mod:`vlm.index`).

The CLIP belongs to the model: ``VLM.load(path)`` uses the ``clip/`` subfolder the model folder carries, if any;
``clip=PATH`` (any CLIP folder :meth:`vlm.clip.Clip.load` reads, or a loaded ``Clip``) gives or overrides it;
``clip=False`` means none. It is loaded on first use; a CLIP method without one raises
:class:`vlm.clip.ClipNotFoundError` saying how to get one."""
from __future__ import annotations

import os
import threading
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path

import torch

from . import compose, generation
from .clip import CLIP_FOLDER
from .config import GenerationOptions, InputLimits
from .grounding import GroundingOptions, ground
from .images import ImageInput
from .messages import normalise, user_turn
from .errors import ContextLengthError
from .generation import Prepared, Tally
from .optimize import InferenceState
from .loading import load_model

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# Measured on this CPU (SmolLM2-135M, bench/): bf16 prefill is ~3x faster than fp32, but decode is ~15%
# slower at this size, so end-to-end `ask` latency is a wash; fp32 keeps greedy outputs identical to the
# stock transformers baseline, so it is the default.
DEFAULT_DTYPE = torch.float32


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return DEFAULT_DTYPE
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def _carried_clip(name_or_path) -> Path | None:
    """The ``clip/`` subfolder of a model folder or shipped model, if it has one."""
    from .loading import model_path

    folder = model_path(name_or_path) / CLIP_FOLDER
    return folder if folder.is_dir() else None


def _turn(source, question: str) -> list[dict]:
    """The user turn of ``ask``: a video part for a video source, else an image part (or none)."""
    from .video import is_video, video_turn

    return video_turn(source, question) if is_video(source) else user_turn(source, question)


class VLM:
    """A llava model with its processor, plus the input checks and generation loop around them."""

    def __init__(self, model, processor, *, name: str | None = None, limits: InputLimits | None = None,
                 clip=None, video=None, grounding: GroundingOptions | None = None):
        from .video import VideoOptions

        self.model = model
        self.processor = processor
        self.name = name or "vlm"
        self.limits = limits or InputLimits()
        self.video = video or VideoOptions()  # frames sampled per video part (vlm.video)
        self.grounding = grounding or GroundingOptions()  # OCR text in chat prompts (vlm.grounding); per call: ocr=
        self._clip_source = clip  # a folder, a loaded Clip, or None/False (none)
        self._clip = None
        self.inference = InferenceState()  # the inference levers applied (VLM.optimize) and their caches

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, vision, llm: str | os.PathLike = "smollm2-135m-instruct", dtype=None, *,
              image_size: int | None = None, vision_feature_layer: int | list[int] = compose.DEFAULT_FEATURE_LAYER,
              **kw) -> "VLM":
        """Compose a new model. ``vision``: a registered tower name (``dinov2-vits14``), a tower folder, a
        cached HF id, or a vision config (CLIP, SigLIP, DINOv2, ...) for a fresh tower; ``image_size``: the
        input size (default: the tower's own); ``vision_feature_layer``: which hidden state(s) feed the projector."""
        model, processor = compose.build(vision, llm, as_dtype(dtype), image_size, vision_feature_layer)
        return cls(model, processor, **kw)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = "vlm-tiny", dtype=None, levers="default", **kw) -> "VLM":
        """Load a registered name, a saved vlm/llava folder, or an unmerged LoRA adapter folder.

        ``clip``: the CLIP for ``embed_images / embed_texts / classify`` (default: the ``clip/`` subfolder the
        model folder carries, if any; ``False``: none).

        ``levers``: CPU inference levers applied after loading (``vlm.optimize``): ``"default"`` = the
        output-preserving ones measured to help, a spec such as ``"int8+reuse"``, an ``InferenceOptions``,
        or ``None`` for the plain transformers model.
        """
        model, processor = load_model(name_or_path, as_dtype(dtype))
        kw.setdefault("name", str(name_or_path))
        if kw.get("clip") is None:
            kw["clip"] = _carried_clip(name_or_path)
        vlm = cls(model, processor, **kw)
        if levers is not None:
            from .optimize import apply, parse_levers

            apply(vlm, parse_levers(levers) if isinstance(levers, str) else levers)
        return vlm

    def save(self, path: str | os.PathLike) -> Path:
        """Write a plain Hugging Face llava folder (safetensors) that stock transformers loads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        if self._clip_source:
            self.clip.save(path / CLIP_FOLDER)  # the model keeps its CLIP
        return path

    def optimize(self, options=None, **levers) -> "VLM":
        """Apply CPU inference levers in place: ``options`` (``vlm.optimize.InferenceOptions``), or ``levers``
        changed on the options applied so far (e.g. ``threads=1``; ``int8=True`` also selects the torch engine)."""
        from .optimize import InferenceOptions, apply

        if levers:
            options = (options or self.inference.options or InferenceOptions()).with_levers(**levers)
        return apply(self, options)

    # -- generation ---------------------------------------------------------------------------
    def prepare_messages(self, messages: list[dict], ocr=None, answer_tokens: int = 0, screen=None,
                         max_prompt_tokens: int | None = None) -> tuple[list[dict], list]:
        """``(template messages, images)`` of a conversation: checked (:func:`vlm.messages.normalise`), its images
        passed to ``screen`` (if given) once loaded, then each image's OCR text put beside it as ``ocr`` says
        (:mod:`vlm.grounding`; None: ``self.grounding``), in the room the context has left after the rest of the
        prompt and ``answer_tokens`` (and under ``max_prompt_tokens``)."""
        normed, images = normalise(messages, self.limits)
        if screen is not None:
            screen(images)
        grounding = GroundingOptions.resolve(self.grounding, ocr)
        if grounding.ocr == "never" or not images:
            return normed, images
        base = generation.count_prompt_tokens(self.model, self.processor, normed, len(images))
        room = generation.context_length(self.model) - answer_tokens - base
        if max_prompt_tokens is not None:
            room = min(room, max_prompt_tokens - base)
        return ground(normed, images, grounding, self.processor.tokenizer, room=room).messages, images

    def prepare(self, conversations: list[list[dict]], options: GenerationOptions | None = None, ocr=None, *,
                screen=None, max_prompt_tokens: int | None = None, fit_answer: bool = False, answer_format=None,
                **gen) -> Prepared:
        """Check and encode conversations (images loaded and processed, OCR text put beside them as ``ocr``
        says): the batch, its options, and each conversation's prompt length in tokens, image tokens included.
        Input errors surface here; a prompt too long is a :class:`vlm.errors.ContextLengthError`.

        ``screen``: called with each conversation's loaded images before anything else reads them (a server's
        moderation); it raises to refuse. ``max_prompt_tokens``: the longest prompt accepted (OCR text only gets
        the room under it). ``fit_answer``: ``max_new_tokens`` is an upper bound, lowered to what the context
        leaves after the longest prompt; without it, a prompt that leaves less is an error. ``answer_format``: a
        ``vlm.extract.structured.answer_machine``: the answer is JSON that it accepts (constrained decoding)."""
        opts = GenerationOptions.from_kwargs(options, **gen)
        from .video import expand_videos

        conversations = [expand_videos(c, self.video, self.limits) for c in conversations]
        normed, images = zip(*(self.prepare_messages(c, ocr, opts.max_new_tokens, screen, max_prompt_tokens)
                               for c in conversations))
        counts = [generation.count_prompt_tokens(self.model, self.processor, c, len(i)) for c, i in zip(normed, images)]
        longest = max(counts)
        if max_prompt_tokens is not None and longest > max_prompt_tokens:
            raise ContextLengthError(f"prompt is {longest} tokens (images included); the limit is {max_prompt_tokens}",
                                     prompt_tokens=longest, limit=max_prompt_tokens)
        if fit_answer:
            context = generation.context_length(self.model)
            if context - longest < 1:
                raise ContextLengthError(
                    f"prompt is {longest} tokens (images included), which leaves no room for an answer: the model's "
                    f"context is {context} tokens", prompt_tokens=longest, context=context)
            opts = replace(opts, max_new_tokens=min(opts.max_new_tokens, context - longest))
        batch = generation.encode(self.model, self.processor, list(normed), list(images), opts)
        lengths = [int(n) for n in batch["attention_mask"].sum(dim=1)]
        prepared = Prepared(batch, opts, lengths, [len(i) for i in images])
        if answer_format is not None:
            from .extract.structured import answer_processor

            proc = answer_processor(self.model, self.processor.tokenizer, answer_format, prepared.prompt_width)
            prepared.logits_processors, prepared.eos_token_ids = [proc], proc.eos_ids
        return prepared

    def generate(self, prepared: Prepared, cancel: threading.Event | None = None, tally: Tally | None = None) -> list[str]:
        """The answers of a prepared batch, in order. ``tally`` (a :class:`vlm.generation.Tally`): filled with the
        generated token ids."""
        return generation.generate(self.model, self.processor, prepared, cancel, self.inference.prefix_cache, tally,
                                   self.inference.engine)

    def generate_stream(self, prepared: Prepared, cancel: threading.Event | None = None,
                        tally: Tally | None = None) -> Iterator[str]:
        """The answer of a prepared single conversation, in pieces as they are decoded (see
        :func:`vlm.generation.stream`)."""
        return generation.stream(self.model, self.processor, prepared, cancel, self.inference.prefix_cache, tally,
                                 self.inference.engine)

    def eos_token_ids(self) -> list[int]:
        """The ids that end an answer (the model's generation config and the tokenizer's)."""
        return generation.eos_token_ids(self.model, self.processor.tokenizer)

    # ``ocr``: "auto" | "always" | "never" or a GroundingOptions, for this call (default: ``self.grounding``,
    # "auto": an image's OCR text goes into the prompt when OCR finds real text on it; see vlm.grounding).
    def chat(self, messages: list[dict], options: GenerationOptions | None = None, ocr=None, **gen) -> str:
        """Answer the last user turn of a conversation (content: str or list of image/text parts)."""
        return self.generate(self.prepare([messages], options, ocr, **gen))[0]

    def chat_batch(self, conversations: list[list[dict]], options=None, ocr=None, **gen) -> list[str]:
        if not conversations:
            return []
        return self.generate(self.prepare(conversations, options, ocr, **gen))

    def chat_stream(
        self, messages: list[dict], options=None, cancel: threading.Event | None = None, ocr=None, **gen
    ) -> Iterator[str]:
        return self.generate_stream(self.prepare([messages], options, ocr, **gen), cancel)  # input errors: raised here

    def ask(self, image: ImageInput | None, question: str, options=None, ocr=None, **gen) -> str:
        """Answer a question about an image, or a video (a path with a video extension or a ``data:video/``
        URL: ``self.video.frames`` frames sampled uniformly, shown with their times; :mod:`vlm.video`)."""
        return self.chat(_turn(image, question), options, ocr, **gen)

    def ask_batch(self, pairs: list[tuple[ImageInput | None, str]], options=None, ocr=None, **gen) -> list[str]:
        """Answer many (image or video, question) pairs in one batched ``generate`` call."""
        return self.chat_batch([_turn(img, q) for img, q in pairs], options, ocr, **gen)

    def stream(self, image: ImageInput | None, question: str, options=None, cancel=None, ocr=None,
               **gen) -> Iterator[str]:
        return self.chat_stream(_turn(image, question), options, cancel, ocr, **gen)

    # -- the CLIP's uses ---------------------------------------------------------------------------
    @property
    def clip(self):
        """The model's CLIP (:class:`vlm.clip.Clip`), loaded on first use."""
        if self._clip is None:
            from .clip import Clip, ClipNotFoundError, HOW_TO_GET

            source = self._clip_source
            if source is None or source is False:
                raise ClipNotFoundError(
                    f"model {self.name!r} has no CLIP (its folder carries no {CLIP_FOLDER}/ subfolder); pass one "
                    f"with VLM.load(..., clip=PATH) or put it in the model folder as {CLIP_FOLDER}/; {HOW_TO_GET}")
            self._clip = source if isinstance(source, Clip) else Clip.load(source)
        return self._clip

    def embed_images(self, images, batch_size: int = 32) -> torch.Tensor:
        """(N, D) float32 unit vectors of images (one or a sequence) from the model's CLIP."""
        return self.clip.embed_images(images, batch_size)

    def embed_texts(self, texts, batch_size: int = 256) -> torch.Tensor:
        """(N, D) float32 unit vectors of texts (one or a sequence) from the model's CLIP, comparable with
        :meth:`embed_images` by dot product."""
        return self.clip.embed_texts(texts, batch_size)

    def classify(self, image: ImageInput, labels, template: str | None = None, templates=None) -> list[tuple[str, float]]:
        """Zero-shot: ``(label, probability)`` for each label, best first (``template``: e.g. "a photo of {}.";
        ``templates``: several, averaged). See :meth:`vlm.clip.Clip.classify`."""
        from .clip import DEFAULT_TEMPLATE

        return self.clip.classify(image, labels, template or DEFAULT_TEMPLATE, templates)

    def ask_index(self, index, question: str, k: int = 3, filter: str | None = None, options=None, **gen):
        """Answer ``question`` about the ``k`` images of ``index`` (an :class:`vlm.index.ImageIndex`, or its
        folder, opened with this model's CLIP) most similar to it: they are shown to the model as "Image 1:"
        ... "Image k:" before the question. Returns :class:`vlm.index.IndexAnswer` (``text``, ``sources``: the
        hits, in the order shown; ``str()`` of it cites them)."""
        from .errors import InputError
        from .index import ImageIndex, IndexAnswer

        if not 1 <= k <= self.limits.max_images:
            raise InputError(f"k must be in 1..{self.limits.max_images} (images per request), got {k}")
        if not isinstance(index, ImageIndex):
            with ImageIndex.open(index, self.clip) as opened:
                return self.ask_index(opened, question, k, filter, options, **gen)
        hits = index.search(question, k=k, filter=filter)
        if not hits:
            raise InputError(f"the index at {index.folder} has no images{' matching the filter' if filter else ''}")
        content = []
        for i, hit in enumerate(hits, 1):
            if hit.time is None:
                content += [{"type": "text", "text": f"Image {i}:"}, {"type": "image", "image": hit.path}]
            else:  # a video frame: the frame on screen at its time
                from .video import frame_at

                content += [{"type": "text", "text": f"Image {i} (a frame of video {Path(hit.path).name} at "
                                                     f"{hit.time:.1f} s):"},
                            {"type": "image", "image": frame_at(hit.path, hit.time, self.video, self.limits)}]
        content.append({"type": "text", "text": question})
        return IndexAnswer(self.chat([{"role": "user", "content": content}], options, **gen), hits)

    # -- documents ----------------------------------------------------------------------------
    def extract(self, source, fields=None, schema=None, pages=None, template=None, *, ocr_engine=None,
                sources: bool = False, **gen):
        """Fields of a receipt/invoice/form image or PDF as validated JSON grounded in OCR (see vlm.extract).

        ``ocr_engine``: ``"rapidocr"``, ``"tesseract"`` or ``"both"`` (default: ``vlm.ocr.DEFAULT_ENGINE``).
        ``sources=True``: returns ``(result, boxes)``, ``boxes`` the OCR lines (page, box, text) each value came
        from (``vlm.extract.sources``)."""
        from .extract.extract import extract  # the function: importing the submodule elsewhere first rebinds vlm.extract.extract to it

        return extract(self, source, fields=fields, schema=schema, pages=pages, template=template,
                       ocr_engine=ocr_engine, sources=sources, **gen)

    def ocr(self, source, pages=None, *, engine=None) -> list:
        """OCR lines (text, box, score, page) of an image or PDF, in reading order.

        ``engine``: ``"rapidocr"``, ``"tesseract"`` or ``"both"`` (default: ``vlm.ocr.DEFAULT_ENGINE``)."""
        from .documents import ocr_document

        return ocr_document(source, pages, engine=engine)

    # -- introspection ------------------------------------------------------------------------
    def info(self) -> dict:
        cfg = self.model.config
        vc, tc = cfg.vision_config, cfg.text_config
        inner = self.model.model
        levers = self.inference.options

        def count(module) -> int:
            return sum(p.numel() for p in module.parameters())

        return {
            "name": self.name,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "levers": levers.label() if levers is not None else "none",
            "engine": "onnx" if self.inference.engine is not None else "torch",  # what decodes (see vlm.optimize)
            "vision_tower": {
                "type": type(inner.vision_tower).__name__,
                "image_size": vc.image_size,
                "patch_size": vc.patch_size,
                "hidden_size": vc.hidden_size,
                "layers": vc.num_hidden_layers,
                "feature_layer": cfg.vision_feature_layer,
                "parameters": count(inner.vision_tower),
            },
            "projector": {
                "type": "mlp2x_gelu",
                "in": inner.multi_modal_projector.linear_1.in_features,
                "out": inner.multi_modal_projector.linear_2.out_features,
                "parameters": count(inner.multi_modal_projector),
            },
            "llm": {
                "type": tc.model_type,
                "hidden_size": tc.hidden_size,
                "layers": tc.num_hidden_layers,
                "vocab_size": tc.vocab_size,
                "context_length": generation.context_length(self.model),
                "parameters": count(inner.language_model),
            },
            "image_tokens": cfg.image_seq_length,
            "parameters": count(self.model),
        }
