"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .config import ServeConfig
from .engine import Completion, Engine, Job
from .errors import BadRequest, Internal, ModelNotFound, ServeError, ShuttingDown, Timeout, TooLarge, Unauthorized
from .remote_images import image_bytes
from .schemas import ChatCompletionRequest, parse_chat_request

log = logging.getLogger("vlm.serve")


def error_response(err: ServeError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: still an OpenAI error object
        log.exception("unhandled error on %s", request.url.path)
        return error_response(Internal(f"internal error: {type(exc).__name__}"))


class OpenAIRoutes:
    def __init__(self, engine: Engine, config: ServeConfig):
        self.engine = engine
        self.config = config
        self.model_id = config.served_model_id()
        self.model_names = {self.model_id, str(config.model)}
        self.created = int(time.time())
        self.router = APIRouter()
        self.router.add_api_route("/health", self.health, methods=["GET"])
        self.router.add_api_route("/v1/models", self.models, methods=["GET"])
        self.router.add_api_route("/v1/models/{model_id:path}", self.model, methods=["GET"])
        self.router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])

    # -- helpers -----------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("incorrect API key")

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_large = TooLarge(f"request body is over the {limit}-byte limit", code="request_too_large")
        chunks, total = [], 0
        stream = request.stream()
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                # Read on (discarding, up to a bound) so the client sees the 413 rather than a reset.
                if declared.isdigit() and int(declared) <= 4 * limit:
                    async for _ in stream:
                        pass
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def to_vlm_messages(self, req: ChatCompletionRequest) -> list[dict]:
        """OpenAI messages -> vlm messages, with every image fetched or decoded to bytes."""
        limits = self.engine.vlm.limits
        count = sum(1 for m in req.messages if isinstance(m.content, list)
                    for p in m.content if p.type == "image_url")
        if count > limits.max_images:
            raise BadRequest(f"{count} images given; the limit is {limits.max_images} per request",
                             param="messages", code="too_many_images")
        out = []
        for msg in req.messages:
            role = "system" if msg.role == "developer" else msg.role
            if msg.content is None or isinstance(msg.content, str):
                out.append({"role": role, "content": msg.content or ""})
                continue
            parts = []
            for part in msg.content:
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                else:
                    try:
                        data = image_bytes(part.image_url.url, self.config.remote_images, limits)
                    except ServeError:
                        raise
                    except ValueError as exc:  # vlm's ImageError: bad base64, empty...
                        raise BadRequest(str(exc), param="messages") from None
                    parts.append({"type": "image", "image": data})
            out.append({"role": role, "content": parts})
        return out

    # -- routes ------------------------------------------------------------------------------------
    async def health(self):
        snap = self.engine.snapshot()
        status = "shutting_down" if snap["closing"] else "ok"
        return {"status": status, "model": self.model_id, **snap}

    def _model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "vlm"}

    async def models(self, request: Request):
        self.check_auth(request)
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str, request: Request):
        self.check_auth(request)
        if model_id not in self.model_names:
            raise ModelNotFound(f"model {model_id!r} does not exist; this server serves {self.model_id!r}",
                                param="model")
        return self._model_card()

    async def chat_completions(self, request: Request):
        self.check_auth(request)
        req = parse_chat_request(await self.read_body(request))
        if req.model not in self.model_names:
            raise ModelNotFound(f"model {req.model!r} does not exist; this server serves {self.model_id!r}",
                                param="model")
        stops = req.stops
        messages = await run_in_threadpool(self.to_vlm_messages, req)
        prepared = await run_in_threadpool(
            self.engine.prepare_chat, messages, max_tokens=req.answer_budget, temperature=req.temperature,
            top_p=req.top_p, seed=req.seed, stop=stops, repetition_penalty=req.repetition_penalty,
            no_repeat_ngram_size=req.no_repeat_ngram_size,
        )
        job = self.engine.submit_chat(prepared, loop=asyncio.get_running_loop())
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _JobStream(
                job, self._sse(job, cid, include_usage), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            async for _ in job:
                pass
        finally:
            watcher.cancel()
            job.stop("cancelled")  # no-op when finished; frees the worker if we were interrupted
        done: Completion = job.result
        _raise_if_cut_short(job, done)
        return {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": self.model_id,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": done.text, "refusal": None},
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }],
            "usage": _usage(done),
        }

    async def _sse(self, job: Job, cid: str, include_usage: bool):
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices=True) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                    if choices else []}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for piece in job:
                yield chunk({"content": piece})
            done: Completion = job.result
            _raise_if_cut_short(job, done)
            yield chunk({}, finish=done.finish_reason)
            if include_usage:
                yield chunk({}, usage=_usage(done), choices=False)
        except ServeError as err:  # mid-stream failure: OpenAI's clients raise on an "error" event
            yield f"data: {json.dumps(err.to_dict())}\n\n"
        finally:
            job.stop("cancelled")  # the client went away (or we are done: then a no-op)
        yield "data: [DONE]\n\n"


class _JobStream(StreamingResponse):
    """Server-sent events for one job. However the response ends (done, client gone, server stopping),
    the job's cancel Event is set afterwards, so no generation outlives its response."""

    def __init__(self, job: Job, content, **kwargs):
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.stop("cancelled")


def _usage(done: Completion) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _raise_if_cut_short(job: Job, done: Completion) -> None:
    if done.finish_reason == "timeout":
        raise Timeout(f"generation timed out after {job.timeout_s:g}s")
    if done.finish_reason == "shutdown":
        raise ShuttingDown("the server shut down during generation; try again later", retry_after=2)


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    while not job.done.is_set():
        if await request.is_disconnected():
            job.stop("cancelled")
            return
        await asyncio.sleep(0.2)
