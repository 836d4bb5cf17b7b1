"""One model shared by the UI and the API, behind a bounded queue.

``Engine.prepare_chat`` checks a conversation (images, moderation, prompt length) and encodes it through
:meth:`vlm.VLM.prepare` in the caller's thread, so bad requests fail fast. ``Engine.submit`` admits a job if fewer than
``concurrency + queue_size`` are in flight (else :class:`Busy`, 429, whose ``Retry-After`` is the queue's
drain estimate: jobs ahead x recent mean job time / concurrency); ``concurrency`` worker threads run them.
Every job has a cancel Event: the Stop button, a client that disconnects, the per-request timeout (counted
from arrival) and shutdown all set it, and generation stops at the next token. A job stopped while it is
still waiting leaves the queue at once, freeing its slot.

Failures are classified by exception class: a :class:`ServeError` keeps its status; vlm's
:class:`~vlm.errors.InputError` (bad image, prompt too long...) is the client's (400); anything else is a
server failure: its traceback is logged (logger ``vlm.serve``) under the request id, the client gets a 500
``server_error`` naming that id, and ``unhealthy_after`` of them in a row (no success between) make
:meth:`Engine.health` report the model unhealthy.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlm import generation
from vlm.config import GenerationOptions
from vlm.errors import ContextLengthError, InputError

from .config import ServeConfig
from .errors import BadRequest, Busy, ContextTooLong, Internal, ServeError, ShuttingDown, Timeout

log = logging.getLogger("vlm.serve")
_END = object()
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


class Job:
    """A unit of work for the engine, and the channel its output comes back on."""

    def __init__(self, work: Callable[["Job"], Any], timeout_s: float, loop: asyncio.AbstractEventLoop | None = None,
                 request_id: str | None = None):
        self.id = next(_ids)
        self.request_id = request_id or new_request_id()
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
        # the per-request timeout, counted from arrival; made before the job is queued (a worker may finish
        # the job, and cancel this, before ``submit`` starts it)
        self.timer = threading.Timer(timeout_s, self.stop, ("timeout",))
        self.timer.daemon = True
        self._on_stop: Callable[["Job"], None] | None = None  # the engine: take it out of the queue
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
        """Ask the job to stop at the next token (no-op once finished); a waiting job leaves the queue now."""
        if self.done.is_set():
            return
        if self.reason is None:
            self.reason = reason
        self.cancel.set()
        if self._on_stop is not None:
            self._on_stop(self)

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
class ChatRequest:
    """A checked, encoded chat request (:meth:`vlm.VLM.prepare`), and what the server reports about it."""

    prepared: generation.Prepared
    request_id: str
    answer_format: Any = None  # a vlm.extract.structured machine: the answer is JSON it accepts

    @property
    def options(self) -> GenerationOptions:
        return self.prepared.options

    @property
    def batch(self):
        return self.prepared.batch

    @property
    def prompt_tokens(self) -> int:
        return self.prepared.prompt_tokens[0]

    @property
    def images(self) -> int:
        return self.prepared.images[0]


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
    failed: int = 0  # server-side failures (500s), in jobs or while preparing them
    errored: int = 0  # jobs that ended in an error (a server failure, or a client error found only while running)
    running: int = 0
    queued: int = 0
    peak_running: int = 0
    consecutive_failures: int = 0
    last_failure: str | None = None
    started_at: float = field(default_factory=time.time)


class Engine:
    def __init__(self, vlm, config: ServeConfig, moderator=None):
        self.vlm = vlm
        self.config = config
        self.moderator = moderator
        self.stats = Stats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._durations: collections.deque[float] = collections.deque(maxlen=32)  # recent completed jobs, s
        self._closing = False
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._worker, name=f"vlm-worker-{i}", daemon=True)
            for i in range(config.concurrency)
        ]
        for w in self._workers:
            w.start()

    # -- failures ----------------------------------------------------------------------------------
    def internal_error(self, exc: BaseException, request_id: str | None, while_doing: str) -> Internal:
        """Log ``exc`` with its traceback under the request id, count it against the model's health, and
        return the 500 the client gets (which names the id, not the internal message)."""
        request_id = request_id or new_request_id()
        log.error("request %s: %s failed: %s: %s", request_id, while_doing, type(exc).__name__, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))
        with self._lock:
            self.stats.failed += 1
            self.stats.consecutive_failures += 1
            self.stats.last_failure = f"{type(exc).__name__} while {while_doing} (request {request_id})"
        return Internal(f"internal error ({type(exc).__name__}) while {while_doing}; request id {request_id}. "
                        "The server log has the details.", request_id=request_id)

    def health(self) -> tuple[bool, str, str | None]:
        """``(healthy, status, reason)``: status is ok / draining / unhealthy."""
        with self._lock:
            if self._closing:
                return False, "draining", "the server is shutting down"
            n = self.stats.consecutive_failures
            if n >= self.config.unhealthy_after:
                return False, "unhealthy", f"the last {n} requests failed inside the server; last: {self.stats.last_failure}"
            return True, "ok", None

    def retry_after(self) -> int:
        """Seconds until the work now admitted should have drained: jobs ahead x mean job time / concurrency."""
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        ahead = self.stats.running + self.stats.queued
        mean = (sum(self._durations) / len(self._durations)) if self._durations else float(self.config.retry_after_s)
        return max(1, math.ceil(ahead * mean / self.config.concurrency))

    # -- preparing -------------------------------------------------------------------------------
    def default_options(self) -> GenerationOptions:
        """What a request that sets nothing gets: greedy, the server's default answer budget."""
        return GenerationOptions(max_new_tokens=min(self.config.default_max_tokens, self.config.max_tokens_cap))

    def prepare_chat(self, messages: list[dict], options: GenerationOptions | None = None, *, fit_answer: bool = False,
                     answer_format=None, request_id: str | None = None, ocr=None) -> ChatRequest:
        """Check a conversation (images loaded and screened by the moderator before OCR reads them, prompt
        length) and encode it, through :meth:`vlm.VLM.prepare`, in the caller's thread.

        ``options``: None means :meth:`default_options` with the answer budget lowered to what the context leaves
        (as does ``fit_answer``: the client set no budget); given, its ``max_new_tokens`` is the client's, refused
        when the context has no room for it. ``answer_format``: a ``vlm.extract.structured`` machine the answer
        must be accepted by (JSON). ``ocr``: "auto" / "always" / "never" (None: the model's default)."""
        request_id = request_id or new_request_id()
        if options is None:
            options, fit_answer = self.default_options(), True
        cap = self.config.max_tokens_cap
        if options.max_new_tokens > cap:
            raise BadRequest(f"max_tokens is {options.max_new_tokens}; this server allows at most {cap}",
                             param="max_tokens")
        try:
            prepared = self.vlm.prepare(
                [messages], options, ocr, screen=self.moderator.check if self.moderator is not None else None,
                max_prompt_tokens=self.config.max_prompt_tokens, fit_answer=fit_answer, answer_format=answer_format)
        except ServeError:
            raise
        except ContextLengthError as exc:
            raise ContextTooLong(_context_message(exc), param="messages") from None
        except InputError as exc:  # vlm's own checks: a clear message about the client's input
            raise BadRequest(str(exc), param="messages") from None
        except Exception as exc:
            raise self.internal_error(exc, request_id, "preparing the prompt") from None
        return ChatRequest(prepared, request_id, answer_format)

    # -- running ---------------------------------------------------------------------------------
    def submit(self, work: Callable[[Job], Any], loop: asyncio.AbstractEventLoop | None = None,
               timeout_s: float | None = None, request_id: str | None = None) -> Job:
        job = Job(work, timeout_s or self.config.request_timeout_s, loop, request_id)
        with self._lock:
            if self._closing:
                self.stats.rejected += 1
                raise ShuttingDown("the server is shutting down; try again later",
                                   retry_after=self._retry_after_locked())
            if self.stats.running + self.stats.queued >= self.config.capacity:
                self.stats.rejected += 1
                wait = self._retry_after_locked()
                raise Busy(
                    f"the server is busy: {self.stats.running} requests running and {self.stats.queued} waiting "
                    f"(limit {self.config.capacity}); retry in {wait}s", retry_after=wait,
                )
            self.stats.submitted += 1
            self.stats.queued += 1
            job._on_stop = self._withdraw
            self._waiting.append(job)
            self._wake.notify()
        job.timer.start()  # a job that already finished cancelled it: starting it then does nothing
        return job

    def submit_chat(self, request: ChatRequest, loop=None) -> Job:
        return self.submit(lambda job: self._generate(job, request), loop, request_id=request.request_id)

    def _withdraw(self, job: Job) -> None:
        """A job stopped while waiting: out of the queue now, finished with the reason's error."""
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # already running (the cancel Event stops it) or finished
            self.stats.queued -= 1
            error = _stopped_error(job, self._retry_after_locked())
            self._account(job, error)
            job.finish(error=error)
        job.timer.cancel()

    def _generate(self, job: Job, request: ChatRequest) -> Completion:
        tally = generation.Tally()  # exact usage: every generated token, the end-of-sequence one included
        text = ""
        for piece in self.vlm.generate_stream(request.prepared, job.cancel, tally):
            text += piece
            job.emit(piece)
        reason = job.reason or generation.finish_reason(request.prepared, tally, self.vlm.eos_token_ids())
        if request.answer_format is not None and reason == "stop":
            from vlm.extract.structured import parse_answer

            parse_answer(text)  # the decoder guarantees it; if not, that is a server bug: fail loudly
        return Completion(text=text.strip(), prompt_tokens=request.prompt_tokens, completion_tokens=tally.tokens,
                          finish_reason=reason)

    def _worker(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._stopping:
                    self._wake.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                self.stats.queued -= 1
                self.stats.running += 1
                self.stats.peak_running = max(self.stats.peak_running, self.stats.running)
                self._running.add(job)
            self._run(job)

    def _run(self, job: Job) -> None:
        result, error = None, None
        try:
            if job.cancel.is_set():  # stopped between leaving the queue and here
                error = _stopped_error(job, self.retry_after())
            else:
                job.started = time.monotonic()
                result = job.work(job)
        except ServeError as exc:
            error = exc
        except InputError as exc:  # vlm's checks of the client's input, met while running
            error = BadRequest(str(exc))
        except Exception as exc:  # never let one request take a worker down
            error = self.internal_error(exc, job.request_id, "generating")
        finally:
            job.timer.cancel()
            with self._lock:  # counted before the caller can see the outcome, so the counters are never behind
                self.stats.running -= 1
                self._running.discard(job)
                self._account(job, error)
            job.finish(result=result, error=error)

    def _account(self, job: Job, error: BaseException | None) -> None:
        """Count a finished job (lock held). Internal failures were counted by :meth:`internal_error`."""
        s = self.stats
        if job.reason == "timeout":
            s.timed_out += 1
        elif job.reason is not None:
            s.cancelled += 1
        elif error is None:
            s.completed += 1
            s.consecutive_failures = 0
            if job.started is not None:
                self._durations.append(time.monotonic() - job.started)
        else:
            s.errored += 1

    # -- status and shutdown ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            s = self.stats
            return {
                "running": s.running, "queued": s.queued, "peak_running": s.peak_running,
                "submitted": s.submitted, "completed": s.completed, "rejected": s.rejected,
                "cancelled": s.cancelled, "timed_out": s.timed_out, "failed": s.failed,
                "errored": s.errored, "consecutive_failures": s.consecutive_failures,
                "last_failure": s.last_failure,
                "mean_job_s": round(sum(self._durations) / len(self._durations), 3) if self._durations else None,
                "concurrency": self.config.concurrency, "queue_size": self.config.queue_size,
                "closing": self._closing, "uptime_s": round(time.time() - s.started_at, 1),
            }

    def idle(self) -> bool:
        with self._lock:
            return self.stats.running == 0 and self.stats.queued == 0

    def begin_shutdown(self, grace_s: float | None = None) -> None:
        """Refuse new work, fail what is waiting, and give running jobs ``grace_s`` before stopping them."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            waiting = list(self._waiting)
        for job in waiting:  # each leaves the queue at once with a 503
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
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.join(max(0.0, deadline - time.monotonic()))


def _context_message(exc: ContextLengthError) -> str:
    """The client's view of a prompt too long: in the API's terms (max_tokens, this server's limit)."""
    said = f"prompt is {exc.prompt_tokens} tokens (images included)"
    if exc.limit is not None:
        return f"{said}; this server allows {exc.limit}"
    if exc.answer_tokens is None:
        return f"{said}, which leaves no room for an answer: the model's context is {exc.context} tokens"
    return f"{said} and max_tokens is {exc.answer_tokens}; the model's context is {exc.context} tokens"


def _stopped_error(job: Job, retry_after: int = 1) -> ServeError:
    if job.reason == "timeout":
        return Timeout(f"the request timed out after {job.timeout_s:g}s waiting for the model")
    if job.reason == "shutdown":
        return ShuttingDown("the server is shutting down; try again later", retry_after=retry_after)
    return BadRequest("the request was cancelled", code="cancelled")
