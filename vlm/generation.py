"""Generation on a llava model: prompt building, batched decoding, streaming with cancellation."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .config import GenerationOptions
from .errors import InputError
from .messages import check_placeholders
from .optimize import cache_kwarg


@dataclass
class Prepared:
    """A checked, encoded request (``VLM.prepare``): what generation needs, and what callers report."""

    batch: Any  # the processor's BatchFeature: input_ids, attention_mask, pixel_values
    options: GenerationOptions
    prompt_tokens: list[int]  # per conversation, image tokens included
    images: list[int]  # images per conversation


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
        raise InputError(
            f"prompt is {longest} tokens (images included) and max_new_tokens is {opts.max_new_tokens}; "
            f"the model's context is {limit} tokens"
        )
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
def _seeded(seed: int | None):
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


def _batch_kwargs(model, processor, batch, opts: GenerationOptions, prefix_cache) -> dict:
    return _with_prefix(model, batch, generate_kwargs(model, processor, opts, batch["input_ids"].shape[1]), prefix_cache)


class _FirstStep(StoppingCriteria):
    """Never stops generation; records that a first token was produced."""

    def __init__(self):
        self.seen = False

    def __call__(self, input_ids, scores, **kwargs):
        self.seen = True
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def _run_generate(model, batch, kwargs: dict, prefix_cache):
    """``model.generate``. If it fails before its first token while starting from the prompt-prefix cache,
    the cache switches itself off (logged) and the request runs again without it: the optimisation never
    breaks a request."""
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


def generate(model, processor, batch, opts: GenerationOptions, cancel: threading.Event | None = None,
             prefix_cache=None) -> list[str]:
    """Greedy/sampled/beam answers of a batch. ``prefix_cache``: a ``vlm.optimize.PromptPrefixCache`` to start
    single prompts from (the ``VLM``'s, ``vlm.inference.prefix_cache``), or None."""
    kwargs = _batch_kwargs(model, processor, batch, opts, prefix_cache)
    if cancel is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([CancelCriteria(cancel)])
    with torch.inference_mode(), _seeded(opts.seed):
        out = _run_generate(model, batch, kwargs, prefix_cache)
    new = out[:, batch["input_ids"].shape[1]:]
    texts = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [trim_stop(t, opts.stop).strip() for t in texts]


def stream(model, processor, batch, opts: GenerationOptions, cancel: threading.Event | None = None,
           prefix_cache=None) -> Iterator[str]:
    """Yield text pieces as they are decoded. Closing the iterator (or setting ``cancel``) stops decoding.
    Beam search only knows its answer at the end: it comes as one piece."""
    cancel = cancel or threading.Event()
    if opts.num_beams > 1:
        yield from generate(model, processor, batch, opts, cancel, prefix_cache)
        return
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = _batch_kwargs(model, processor, batch, opts, prefix_cache)
    kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([CancelCriteria(cancel)]))
    errors: list[BaseException] = []

    def run():
        try:
            with torch.inference_mode(), _seeded(opts.seed):
                _run_generate(model, batch, kwargs, prefix_cache)
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
