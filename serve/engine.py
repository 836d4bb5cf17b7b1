"""One model shared by the UI and the API, behind a bounded queue.

``Engine.prepare_chat`` checks a conversation (images, moderation, prompt length) and tokenises it in
the caller's thread, so bad requests fail fast. ``Engine.submit`` admits a job if fewer than
``concurrency + queue_size`` are in flight (else :class:`Busy`, 429); ``concurrency`` worker threads run
them. Every job has a cancel Event: the Stop button, a client that disconnects, the per-request timeout
and shutdown all set it, and generation stops at the next token.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlm import generation
from vlm.config import GenerationOptions
from vlm.messages import normalise

from .config import ServeConfig
from .errors import BadRequest, Busy, ContextTooLong, Internal, ServeError, ShuttingDown, Timeout

log = logging.getLogger("vlm.serve")
_END = object()
_ids = itertools.count(1)


class Job:
    """A unit of work for the engine, and the channel its output comes back on."""

    def __init__(self, work: Callable[["Job"], Any], timeout_s: float, loop: asyncio.AbstractEventLoop | None = None):
        self.id = next(_ids)
        self.work = work
        self.created = time.monotonic()
        self.deadline = self.created + timeout_s
        self.timeout_s = timeout_s
        self.cancel = threading.Event()
        self.reason: str | None = None  # why it was stopped early: cancelled / timeout / shutdown
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started: float | None = None
        self._loop = loop
        self._events: queue.Queue | asyncio.Queue = asyncio.Queue() if loop else queue.Queue()

    # -- producer side (worker thread) ----------------------------------------------------------
    def _put(self, item) -> None:
        if self._loop is None:
            self._events.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the loop is gone (server stopped): nobody is listening
            pass

    def emit(self, piece: str) -> None:
        self._put(piece)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        self.result, self.error = result, error
        self.done.set()
        self._put(_END)

    # -- consumer side ---------------------------------------------------------------------------
    def stop(self, reason: str = "cancelled") -> None:
        """Ask the job to stop at the next token (no-op once finished)."""
        if self.reason is None and not self.done.is_set():
            self.reason = reason
        self.cancel.set()

    def __iter__(self) -> Iterator[str]:
        """Pieces as they are produced (blocking; for threads). Raises the job's error at the end."""
        while True:
            item = self._events.get()
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            item = await self._events.get()
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    def wait(self) -> Any:
        """Block until done (thread consumers); returns the result or raises the error."""
        for _ in self:
            pass
        return self.result


@dataclass
class Prepared:
    """A checked, tokenised conversation ready to generate from."""

    batch: Any
    options: GenerationOptions
    prompt_tokens: int
    images: int


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop / length / cancelled / timeout / shutdown


@dataclass
class Stats:
    submitted: int = 0
    completed: int = 0
    rejected: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0
    peak_running: int = 0
    started_at: float = field(default_factory=time.time)


class Engine:
    def __init__(self, vlm, config: ServeConfig, moderator=None):
        self.vlm = vlm
        self.config = config
        self.moderator = moderator
        self.stats = Stats()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._running: set[Job] = set()
        self._closing = False
        self._workers = [
            threading.Thread(target=self._worker, name=f"vlm-worker-{i}", daemon=True)
            for i in range(config.concurrency)
        ]
        for w in self._workers:
            w.start()

    # -- preparing -------------------------------------------------------------------------------
    def prepare_chat(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, seed: int | None = None, stop: list[str] | None = None,
                     repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None) -> Prepared:
        """Load and screen the images, build the prompt and settle the answer budget."""
        model, processor = self.vlm.model, self.vlm.processor
        try:
            normed, images = normalise(messages, self.vlm.limits)
            if self.moderator is not None:
                self.moderator.check(images)
            probe = GenerationOptions(max_new_tokens=1)
            batch = generation.encode(model, processor, [normed], [images], probe)
        except ServeError:
            raise
        except ValueError as exc:  # vlm's InputError / ImageError: a clear message already
            raise BadRequest(str(exc), param="messages") from None
        prompt_tokens = int(batch["attention_mask"].sum())
        context = generation.context_length(model)
        cap = self.config.max_prompt_tokens
        if cap is not None and prompt_tokens > cap:
            raise ContextTooLong(
                f"prompt is {prompt_tokens} tokens (images included); this server allows {cap}", param="messages"
            )
        room = context - prompt_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.config.default_max_tokens, room))
        elif max_tokens > self.config.max_tokens_cap:
            raise BadRequest(f"max_tokens is {max_tokens}; this server allows at most {self.config.max_tokens_cap}",
                             param="max_tokens")
        if max_tokens > room:
            raise ContextTooLong(
                f"prompt is {prompt_tokens} tokens (images included) and max_tokens is {max_tokens}; "
                f"the model's context is {context} tokens", param="messages",
            )
        try:
            opts = GenerationOptions(max_new_tokens=max_tokens, temperature=0.0 if temperature is None else temperature,
                                     top_p=1.0 if top_p is None else top_p, seed=seed, stop=list(stop or []),
                                     repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
                                     no_repeat_ngram_size=no_repeat_ngram_size or 0)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return Prepared(batch=batch, options=opts, prompt_tokens=prompt_tokens, images=len(images))

    # -- running ---------------------------------------------------------------------------------
    def submit(self, work: Callable[[Job], Any], loop: asyncio.AbstractEventLoop | None = None,
               timeout_s: float | None = None) -> Job:
        job = Job(work, timeout_s or self.config.request_timeout_s, loop)
        with self._lock:
            if self._closing:
                self.stats.rejected += 1
                raise ShuttingDown("the server is shutting down; try again later", retry_after=self.config.retry_after_s)
            if self.stats.running + self.stats.queued >= self.config.capacity:
                self.stats.rejected += 1
                raise Busy(
                    f"the server is busy: {self.stats.running} requests running and {self.stats.queued} waiting "
                    f"(limit {self.config.capacity}); retry in {self.config.retry_after_s}s",
                    retry_after=self.config.retry_after_s,
                )
            self.stats.submitted += 1
            self.stats.queued += 1
        self._queue.put(job)
        return job

    def submit_chat(self, prepared: Prepared, loop=None) -> Job:
        return self.submit(lambda job: self._generate(job, prepared), loop)

    def _generate(self, job: Job, prepared: Prepared) -> Completion:
        counted = _CountingModel(self.vlm.model)
        text = ""
        for piece in generation.stream(counted, self.vlm.processor, prepared.batch, prepared.options, job.cancel):
            text += piece
            job.emit(piece)
        n = counted.tokens
        eos = _eos_ids(self.vlm.model)
        if job.reason is not None:
            reason = job.reason
        elif n >= prepared.options.max_new_tokens and counted.last_token not in eos:
            reason = "length"
        else:
            reason = "stop"
        return Completion(text=text.strip(), prompt_tokens=prepared.prompt_tokens, completion_tokens=n,
                          finish_reason=reason)

    def _worker(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self.stats.queued -= 1
                self.stats.running += 1
                self.stats.peak_running = max(self.stats.peak_running, self.stats.running)
                self._running.add(job)
            timer = None
            try:
                remaining = job.deadline - time.monotonic()
                if job.cancel.is_set():
                    job.finish(error=_stopped_error(job))
                elif remaining <= 0:
                    job.stop("timeout")
                    job.finish(error=_stopped_error(job))
                else:
                    job.started = time.monotonic()
                    timer = threading.Timer(remaining, job.stop, ("timeout",))
                    timer.daemon = True
                    timer.start()
                    job.finish(result=job.work(job))
            except ServeError as exc:
                job.finish(error=exc)
            except ValueError as exc:
                job.finish(error=BadRequest(str(exc)))
            except Exception as exc:  # never let one request take a worker down
                log.exception("job %s failed", job.id)
                job.finish(error=Internal(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    self.stats.running -= 1
                    self._running.discard(job)
                    if job.error is not None and job.reason is None:
                        self.stats.failed += 1
                    elif job.reason == "timeout":
                        self.stats.timed_out += 1
                    elif job.reason is not None:
                        self.stats.cancelled += 1
                    else:
                        self.stats.completed += 1

    # -- status and shutdown ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            s = self.stats
            return {
                "running": s.running, "queued": s.queued, "peak_running": s.peak_running,
                "submitted": s.submitted, "completed": s.completed, "rejected": s.rejected,
                "cancelled": s.cancelled, "timed_out": s.timed_out, "failed": s.failed,
                "concurrency": self.config.concurrency, "queue_size": self.config.queue_size,
                "closing": self._closing, "uptime_s": round(time.time() - s.started_at, 1),
            }

    def begin_shutdown(self, grace_s: float | None = None) -> None:
        """Refuse new work, fail what is waiting, and give running jobs ``grace_s`` before stopping them."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        # Waiting jobs: a worker finishes each at once with a 503, since its cancel Event is set.
        for job in list(self._queue.queue):
            if job is not None:
                job.stop("shutdown")
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s

        def stop_running():
            with self._lock:
                running = list(self._running)
            for job in running:
                job.stop("shutdown")

        timer = threading.Timer(grace, stop_running)
        timer.daemon = True
        timer.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything now and join the workers."""
        self.begin_shutdown(0)
        with self._lock:
            running = list(self._running)
        for job in running:
            job.stop("shutdown")
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.join(max(0.0, deadline - time.monotonic()))


class _CountingModel:
    """The model, with ``generate`` wrapped so the streamer also counts the tokens it is fed.

    ``generation.stream`` owns the decode loop; this lets usage report exact completion tokens (the
    end-of-sequence token included) instead of re-tokenising the text.
    """

    def __init__(self, model):
        self._model = model
        self.tokens = 0
        self.last_token: int | None = None

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *args, streamer=None, **kwargs):
        if streamer is not None:
            inner_put, seen_prompt = streamer.put, [False]

            def put(value):
                if seen_prompt[0]:
                    flat = value.reshape(-1)
                    self.tokens += int(flat.numel())
                    self.last_token = int(flat[-1]) if flat.numel() else self.last_token
                else:
                    seen_prompt[0] = True  # the first call carries the prompt
                inner_put(value)

            streamer.put = put
        return self._model.generate(*args, streamer=streamer, **kwargs)


def _eos_ids(model) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = getattr(model.config.text_config, "eos_token_id", None)
    return set(ids) if isinstance(ids, (list, tuple)) else {ids}


def _stopped_error(job: Job) -> ServeError:
    if job.reason == "timeout":
        return Timeout(f"the request timed out after {job.timeout_s:g}s waiting for the model")
    if job.reason == "shutdown":
        return ShuttingDown("the server is shutting down; try again later", retry_after=2)
    return BadRequest("the request was cancelled", code="cancelled")
