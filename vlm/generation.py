"""Generation on a llava model: prompt building, batched decoding, streaming with cancellation."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .config import GenerationOptions
from .errors import ContextLengthError
from .messages import check_placeholders
from .optimize import cache_kwarg


@dataclass
class Prepared:
    """A checked, encoded request (``VLM.prepare``): what generation needs, and what callers report."""

    batch: Any  # the processor's BatchFeature: input_ids, attention_mask, pixel_values
    options: GenerationOptions
    prompt_tokens: list[int]  # per conversation, image tokens included
    images: list[int]  # images per conversation
    logits_processors: list = field(default_factory=list)  # this request's own (a JSON grammar), after the options'
    eos_token_ids: list[int] | None = None  # ends the answer (None: the model's end-of-sequence ids)

    @property
    def prompt_width(self) -> int:
        """The padded prompt length: generated tokens start at this position."""
        return int(self.batch["input_ids"].shape[1])


class Tally(StoppingCriteria):
    """Watches decoding without stopping it: the token ids generated so far, per row (end-of-sequence
    included). Pass one to :func:`generate` / :func:`stream` to learn how many tokens an answer took and how
    it ended."""

    def __init__(self):
        self.prompt_width = 0
        self.ids: torch.Tensor | None = None

    def start(self, prompt_width: int) -> None:
        self.prompt_width, self.ids = prompt_width, None

    def __call__(self, input_ids, scores, **kwargs):
        self.ids = input_ids[:, self.prompt_width:]
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)

    @property
    def tokens(self) -> int:
        """Tokens generated for the (first) row."""
        return 0 if self.ids is None else int(self.ids.shape[1])

    def row(self, i: int = 0) -> list[int]:
        return [] if self.ids is None else self.ids[i].tolist()

    @property
    def last_token(self) -> int | None:
        return None if self.ids is None or self.ids.shape[1] == 0 else int(self.ids[0, -1])


class CancelCriteria(StoppingCriteria):
    """Stops generation as soon as ``event`` is set (the Stop button, a closed stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class AnswerNoRepeatNGram(LogitsProcessor):
    """Bans the token that would repeat an ``n``-gram of the answer so far. Unlike transformers'
    ``no_repeat_ngram_size``, the prompt (system prompt, question, chat markup) does not count: only tokens
    after ``prompt_length`` do."""

    def __init__(self, n: int, prompt_length: int):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n, self.prompt_length = n, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answers = input_ids[:, self.prompt_length:].tolist()
        n = self.n
        for row, ids in enumerate(answers):
            if len(ids) < n - 1:
                continue
            head = ids[len(ids) - n + 1:]  # the last n - 1 tokens (none for n = 1)
            banned = {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == head}
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


def context_length(model) -> int:
    return int(getattr(model.config.text_config, "max_position_embeddings", 2048))


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every end-of-sequence id of the model's generation config and the tokenizer, in that order."""
    ids: list[int] = []
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if int(i) not in ids:
                ids.append(int(i))
    return ids


def finish_reason(prepared: Prepared, tally: Tally, eos_ids: list[int]) -> str:
    """``length`` when the answer used its whole budget without ending itself, else ``stop``."""
    if tally.tokens >= prepared.options.max_new_tokens and tally.last_token not in (prepared.eos_token_ids or eos_ids):
        return "length"
    return "stop"


def count_prompt_tokens(model, processor, conversation: list[dict], n_images: int) -> int:
    """Prompt tokens of a normalised conversation, image tokens included, without processing images."""
    text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    n = len(processor.tokenizer(text)["input_ids"])
    return n + n_images * (int(model.config.image_seq_length) - 1)  # <image> expands in place


def encode(model, processor, conversations: list[list[dict]], images: list[list], opts: GenerationOptions):
    """Tokenise a batch of conversations (already normalised) with their images, checking limits."""
    prompts = []
    for conv, imgs in zip(conversations, images):
        prompt = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        check_placeholders(prompt, len(imgs))
        prompts.append(prompt)
    flat = [img for imgs in images for img in imgs]
    batch = processor(text=prompts, images=flat or None, padding=True, return_tensors="pt")
    limit = context_length(model)
    longest = int(batch["attention_mask"].sum(-1).max())
    if longest + opts.max_new_tokens > limit:
        raise ContextLengthError(
            f"prompt is {longest} tokens (images included) and max_new_tokens is {opts.max_new_tokens}; "
            f"the model's context is {limit} tokens", prompt_tokens=longest, answer_tokens=opts.max_new_tokens,
            context=limit)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    return batch


def generate_kwargs(model, processor, opts: GenerationOptions, prompt_length: int | None = None) -> dict:
    """``model.generate`` keyword arguments for ``opts``; ``prompt_length`` (the padded prompt width) is
    needed for ``no_repeat_ngram_size``, which looks at the answer only."""
    tok = processor.tokenizer
    kwargs = dict(
        max_new_tokens=opts.max_new_tokens,
        do_sample=opts.temperature > 0,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        suppress_tokens=[model.config.image_token_id],
    )
    if opts.temperature > 0:
        kwargs.update(temperature=opts.temperature, top_p=opts.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if opts.num_beams > 1:
        kwargs["num_beams"] = opts.num_beams
    if opts.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = opts.repetition_penalty
    if opts.no_repeat_ngram_size:
        if prompt_length is None:
            raise ValueError("no_repeat_ngram_size needs the prompt length")
        kwargs["logits_processor"] = LogitsProcessorList([AnswerNoRepeatNGram(opts.no_repeat_ngram_size, prompt_length)])
    if opts.stop:
        kwargs.update(stop_strings=opts.stop, tokenizer=tok)
    return kwargs


def trim_stop(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


@contextlib.contextmanager
def seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _with_prefix(model, batch, kwargs: dict, cache) -> dict:
    """Start from the prompt-prefix cache (``vlm.optimize`` lever, or None) when the batch is a single prompt."""
    if cache is not None and batch["input_ids"].shape[0] == 1 and kwargs.get("num_beams", 1) == 1:
        past = cache.past_for(batch["input_ids"][0])
        if past is not None:
            kwargs[cache_kwarg(model)] = past
    return kwargs


def _request_kwargs(model, processor, prepared: Prepared, criteria: list) -> dict:
    """``generate`` keyword arguments of a prepared request: its options, its own logits processors and end
    ids, and the stopping criteria given."""
    kwargs = generate_kwargs(model, processor, prepared.options, prepared.prompt_width)
    if prepared.logits_processors:
        kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []),
                                                          *prepared.logits_processors])
    if prepared.eos_token_ids:
        kwargs["eos_token_id"] = list(prepared.eos_token_ids)
    if criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    return kwargs


def _criteria(prepared: Prepared, cancel: threading.Event | None, tally: Tally | None) -> list:
    out = [CancelCriteria(cancel)] if cancel is not None else []
    if tally is not None:
        tally.start(prepared.prompt_width)
        out.append(tally)
    return out


class _FirstStep(StoppingCriteria):
    """Never stops generation; records that a first token was produced."""

    def __init__(self):
        self.seen = False

    def __call__(self, input_ids, scores, **kwargs):
        self.seen = True
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def _run_generate(model, batch, kwargs: dict, prefix_cache, engine):
    """``model.generate``, or its loop on ``engine`` (``vlm.engines.loop``) when that reproduces these settings.
    If ``model.generate`` fails before its first token while starting from the prompt-prefix cache, the cache
    switches itself off (logged) and the request runs again without it: the optimisation never breaks a
    request."""
    if engine is not None:
        from .engines import loop

        config = loop.settings(model, kwargs)
        if config is not None:
            return loop.run(engine, batch, config, kwargs)
    kwargs = _with_prefix(model, batch, dict(kwargs), prefix_cache)
    key = cache_kwarg(model)
    if key not in kwargs:
        return model.generate(**batch, **kwargs)
    first = _FirstStep()
    criteria = StoppingCriteriaList([*kwargs.get("stopping_criteria", []), first])
    try:
        return model.generate(**batch, **{**kwargs, "stopping_criteria": criteria})
    except Exception as exc:
        if first.seen:
            raise
        prefix_cache.disable(f"generate failed from the cached prefix: {type(exc).__name__}: {exc}")
        streamer = kwargs.get("streamer")
        if streamer is not None:  # the failed call may have fed it the prompt already: skip the retry's too
            streamer.next_tokens_are_prompt = True
        return model.generate(**batch, **{k: v for k, v in kwargs.items() if k != key})


def generate(model, processor, prepared: Prepared, cancel: threading.Event | None = None, prefix_cache=None,
             tally: Tally | None = None, engine=None) -> list[str]:
    """Greedy/sampled/beam answers of a prepared batch. ``prefix_cache``: a ``vlm.optimize.PromptPrefixCache``
    to start single prompts from (the ``VLM``'s, ``vlm.inference.prefix_cache``), or None. ``tally``: filled
    with the generated token ids. ``engine``: a step engine for the LLM (``vlm.inference.engine``, e.g.
    ``vlm.engines.onnx.OrtDecoder``) or None; requests it can't reproduce (beams) run on ``model``."""
    kwargs = _request_kwargs(model, processor, prepared, _criteria(prepared, cancel, tally))
    with torch.inference_mode(), seeded(prepared.options.seed):
        out = _run_generate(model, prepared.batch, kwargs, prefix_cache, engine)
    texts = processor.tokenizer.batch_decode(out[:, prepared.prompt_width:], skip_special_tokens=True)
    return [trim_stop(t, prepared.options.stop).strip() for t in texts]


def stream(model, processor, prepared: Prepared, cancel: threading.Event | None = None, prefix_cache=None,
           tally: Tally | None = None, engine=None) -> Iterator[str]:
    """Yield text pieces of a prepared single conversation as they are decoded. Closing the iterator (or
    setting ``cancel``) stops decoding. Beam search only knows its answer at the end: it comes as one piece."""
    cancel = cancel or threading.Event()
    opts = prepared.options
    if opts.num_beams > 1:
        yield from generate(model, processor, prepared, cancel, prefix_cache, tally, engine)
        return
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = _request_kwargs(model, processor, prepared, _criteria(prepared, cancel, tally))
    kwargs["streamer"] = streamer
    errors: list[BaseException] = []

    def run():
        try:
            with torch.inference_mode(), seeded(opts.seed):
                _run_generate(model, prepared.batch, kwargs, prefix_cache, engine)
        except BaseException as exc:  # re-raised in the consumer's thread
            errors.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, name="vlm-generate", daemon=True)
    worker.start()
    hold = max((len(s) for s in opts.stop), default=1) - 1  # chars that may start a stop string
    text, sent = "", 0
    try:
        for piece in streamer:
            text += piece
            if opts.stop:
                cut = trim_stop(text, opts.stop)
                if len(cut) < len(text):  # a stop string appeared: emit up to it and finish
                    text = cut
                    break
            safe = len(text) - hold if opts.stop else len(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]
    finally:
        cancel.set()
        worker.join()
    if errors:
        raise errors[0]
