"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` (the served model's CLIP,
:mod:`vlm.serve.embeddings`), ``GET /v1/models[/{id}]``, ``GET /health``, and the OpenAPI schema that describes
them (``GET /openapi.json``).

Every failure is an OpenAI error object. A route under ``/v1`` that does not exist is a 404, a known route
asked with the wrong method a 405 with ``Allow``. ``response_format`` ``json_object`` / ``json_schema`` is
decoded under ``vlm.extract.structured`` (the answer is JSON, valid for the schema); the request parameters
vlm does not implement are refused by :mod:`vlm.serve.schemas`.
"""
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
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from vlm import generation
from vlm.errors import InputError

from . import embeddings
from .config import ServeConfig
from .engine import Completion, Engine, Job, new_request_id
from .errors import (BadRequest, MethodNotAllowed, ModelNotFound, RouteNotFound, ServeError, ShuttingDown, Timeout,
                     TooLarge, Unauthorized)
from .remote_images import image_bytes
from .schemas import (ChatCompletion, ChatCompletionRequest, ErrorResponse, Health, ModelCard, ModelList,
                      parse_chat_request)

log = logging.getLogger("vlm.serve")


def error_response(err: ServeError) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=err.status, headers=err.response_headers() or None)


def request_id(request: Request) -> str:
    """The id the request-id middleware gave this request (one is made up when the app runs without it)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = new_request_id()
    return rid


def install_error_handlers(app: FastAPI) -> None:
    """ServeErrors and the router's own 404/405 become OpenAI error objects. Anything else that escapes a
    route is turned into a logged 500 by ``vlm.serve.middleware.RequestIds``."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return error_response(exc)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):  # vlm's checks of the client's input
        return error_response(BadRequest(str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(http_error(exc.status_code, request.method, request.url.path, exc.headers))


def http_error(status: int, method: str, path: str, headers: dict | None = None) -> ServeError:
    """The OpenAI error object for a routing failure (no such route, wrong method)."""
    headers = dict(headers or {})
    if status == 405:
        allow = headers.get("Allow") or headers.get("allow") or ""
        return MethodNotAllowed(f"{method} is not allowed on {path}" + (f"; allowed: {allow}" if allow else ""),
                                headers={"Allow": allow} if allow else None)
    if status == 404:
        return RouteNotFound(f"no route {method} {path}; the API is under /v1 (see /openapi.json)")
    return ServeError(f"HTTP {status} on {method} {path}", status=status,
                      code={401: "unauthorized", 413: "request_too_large"}.get(status))


# One server-sent event of a streamed answer (OpenAPI 3.1: the schema of a text/event-stream describes each event)
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "a chat.completion.chunk (JSON), an OpenAI error object (JSON) if the answer "
                                     "failed after it started, or [DONE] (last)"}}}


class _Refuse:
    """An ASGI endpoint that answers every method with a routing error (404, or 405 with ``allow``)."""

    def __init__(self, status: int, allow: str | None = None):
        self.status, self.allow = status, allow

    async def __call__(self, scope, receive, send):
        raise http_error(self.status, scope["method"], scope["path"], {"Allow": self.allow} if self.allow else None)


_ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "bad request (an OpenAI error object naming the problem)", 401: "missing or wrong API key",
    404: "unknown model", 405: "wrong method", 413: "body or image too large", 429: "queue full (Retry-After)",
    500: "server-side failure (the message names the request id)", 503: "shutting down (Retry-After)",
    504: "timed out",
}.items()}


def _errors(*codes: int) -> dict:
    return {c: _ERRORS[c] for c in codes}


class OpenAIRoutes:
    def __init__(self, engine: Engine, config: ServeConfig):
        self.engine = engine
        self.config = config
        self.model_id = config.served_model_id()
        self.model_names = {self.model_id, str(config.model)}
        self.created = int(time.time())
        self.router = APIRouter()
        r = self.router
        r.add_api_route("/health", self.health, methods=["GET"], response_model=None, summary="Health",
                        responses={200: {"model": Health, "description": "serving"},
                                   503: {"model": Health, "description": "draining, or failing repeatedly"}})
        auth = _errors(401) if config.api_key else {}
        r.add_api_route("/v1/models", self.models, methods=["GET"], response_model=None, summary="List models",
                        responses={200: {"model": ModelList, "description": "the served model"}, **auth})
        r.add_api_route("/v1/models/{model_id:path}", self.model, methods=["GET"], response_model=None,
                        summary="Retrieve a model",
                        responses={200: {"model": ModelCard, "description": "the model"}, **_errors(404), **auth})
        r.add_api_route(
            "/v1/chat/completions", self.chat_completions, methods=["POST"], response_model=None,
            summary="Create a chat completion",
            responses={200: {"model": ChatCompletion, "description": "the answer; with stream=true, server-sent "
                             "events of chat.completion.chunk objects ending in 'data: [DONE]'",
                             "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                       **_errors(400, 404, 413, 429, 500, 503, 504), **auth},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}},
        )
        r.add_api_route(
            "/v1/embeddings", self.create_embeddings, methods=["POST"], response_model=None,
            summary="Create embeddings",
            description="Unit vectors of texts and (vlm's extension) images, from the served model's CLIP: an "
                        "input item that is a `data:image/` string or an `image_url` object is an image.",
            responses={200: {"model": embeddings.EmbeddingList, "description": "one embedding per input, in order"},
                       **_errors(400, 404, 413, 429, 500, 503, 504), **auth},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}}}},
        )
        self.paths = {"/health": {"GET"}, "/v1/models": {"GET"}, "/v1/models/{model_id:path}": {"GET"},
                      "/v1/chat/completions": {"POST"}, "/v1/embeddings": {"POST"}}
        # After the routes above (which match their own methods first): any other method on them is a 405,
        # anything else under /v1 is ours, not the UI's: an OpenAI 404. Raw ASGI endpoints match every method.
        for path, methods in self.paths.items():
            r.routes.append(Route(path, _Refuse(405, ", ".join(sorted(methods))), include_in_schema=False))
        for path in ("/v1", "/v1/{rest:path}"):
            r.routes.append(Route(path, _Refuse(404), include_in_schema=False))

    def openapi_components(self) -> dict:
        """Schemas for ``components.schemas``: the request body the chat route reads itself."""
        schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        defs = schema.pop("$defs", {})
        # the names this server answers to (anything else is a 404 model_not_found); a local model folder's path,
        # which is accepted too, is not published
        names = sorted(n for n in self.model_names if "/" not in n and "\\" not in n) or [self.model_id]
        schema["properties"]["model"] = {"type": "string", "title": "Model", "enum": names}
        schema["properties"]["max_tokens"]["anyOf"][0]["maximum"] = self.config.max_tokens_cap
        schema["properties"]["max_completion_tokens"]["anyOf"][0]["maximum"] = self.config.max_tokens_cap
        emb = embeddings.EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        defs.update(emb.pop("$defs", {}))
        emb["properties"]["model"] = {"type": "string", "title": "Model", "enum": names}
        return {"ChatCompletionRequest": schema, "EmbeddingRequest": emb, **defs}

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
        """OpenAI messages -> vlm messages, with every image fetched or decoded to bytes and every video
        (the ``video_url`` extension) sampled to frames with their times (:mod:`vlm.video`)."""
        limits = self.engine.vlm.limits
        parts = [p for m in req.messages if isinstance(m.content, list) for p in m.content if p.type != "text"]
        count = sum(1 if p.type == "image_url" else (p.video_url.frames or self.config.video.frames) for p in parts)
        if count > limits.max_images:
            frames = " (video frames included)" if any(p.type != "image_url" for p in parts) else ""
            raise BadRequest(f"{count} images given{frames}; the limit is {limits.max_images} per request",
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
                    continue
                try:
                    if part.type == "video_url":
                        from vlm.video import video_parts

                        from .remote_images import video_bytes

                        data = video_bytes(part.video_url.url, self.config.remote_images, self.config.video.max_bytes)
                        parts += video_parts(data, part.video_url.frames, self.config.video, limits)
                        continue
                    data = image_bytes(part.image_url.url, self.config.remote_images, limits)
                except ServeError:
                    raise
                except InputError as exc:  # vlm's ImageError / VideoError: bad base64, empty, corrupt...
                    raise BadRequest(str(exc), param="messages") from None
                parts.append({"type": "image", "image": data})
            out.append({"role": role, "content": parts})
        return out

    def answer_format(self, req: ChatCompletionRequest):
        """The structured-answer machine ``response_format`` asks for (None: free text)."""
        wants_json, schema = req.json_schema
        if not wants_json:
            return None
        for param, given in (("stop", req.stops), ("no_repeat_ngram_size", req.no_repeat_ngram_size)):
            if given:
                raise BadRequest(f"{param} cannot be combined with a JSON response_format: the JSON grammar decides "
                                 "what the answer may contain and where it ends", param=param)
        from vlm.extract.schema import SchemaError
        from vlm.extract.structured import answer_machine

        try:
            return answer_machine(schema)
        except SchemaError as exc:
            raise BadRequest(f"response_format.json_schema.schema: {exc}", param="response_format") from None

    # -- routes ------------------------------------------------------------------------------------
    async def health(self):
        healthy, status, reason = self.engine.health()
        body = {"status": status, "reason": reason, "model": self.model_id,
                "context_length": generation.context_length(self.engine.vlm.model), **self.engine.snapshot()}
        return JSONResponse(body, status_code=200 if healthy else 503)

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
        rid = request_id(request)
        req = parse_chat_request(await self.read_body(request))
        if req.model not in self.model_names:
            raise ModelNotFound(f"model {req.model!r} does not exist; this server serves {self.model_id!r}",
                                param="model")
        answer_format = self.answer_format(req)
        messages = await run_in_threadpool(self.to_vlm_messages, req)
        try:
            options = req.generation_options(self.engine.default_options())
        except ValueError as exc:  # GenerationOptions' own checks of the client's values
            raise BadRequest(str(exc)) from None
        prepared = await run_in_threadpool(
            self.engine.prepare_chat, messages, options, fit_answer=req.answer_budget is None,
            answer_format=answer_format, request_id=rid, ocr=req.ocr)
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
            job.stop("cancelled")  # no-op when finished; frees the worker (or the queue slot) if interrupted
        done: Completion = job.result
        self._raise_if_cut_short(job, done)
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

    async def create_embeddings(self, request: Request):
        self.check_auth(request)
        rid = request_id(request)
        req = embeddings.parse_embedding_request(await self.read_body(request))
        if req.model not in self.model_names:
            raise ModelNotFound(f"model {req.model!r} does not exist; this server serves {self.model_id!r}",
                                param="model")
        cfg = self.config
        texts, images = await run_in_threadpool(embeddings.split_inputs, req, self.engine.vlm.limits,
                                                cfg.remote_images, cfg.max_embedding_inputs, cfg.max_embedding_images)
        job = self.engine.submit(lambda job: embeddings.embed(self.engine.vlm, req, texts, images, self.model_id),
                                 loop=asyncio.get_running_loop(), request_id=rid)
        try:
            async for _ in job:
                pass
        finally:
            job.stop("cancelled")  # no-op when finished
        if job.reason == "timeout":
            raise Timeout(f"the embeddings request timed out after {job.timeout_s:g}s")
        return job.result

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
            self._raise_if_cut_short(job, done)
            yield chunk({}, finish=done.finish_reason)
            if include_usage:
                yield chunk({}, usage=_usage(done), choices=False)
        except ServeError as err:  # mid-stream failure: OpenAI's clients raise on an "error" event
            if err.status >= 500:
                log.warning("request %s: stream ended with %d %s: %s", job.request_id, err.status, err.code,
                            err.message)
            yield f"data: {json.dumps(err.to_dict())}\n\n"
        except Exception as exc:  # a bug in this generator: logged, and the stream still ends cleanly
            err = self.engine.internal_error(exc, job.request_id, "streaming the answer")
            yield f"data: {json.dumps(err.to_dict())}\n\n"
        finally:
            job.stop("cancelled")  # the client went away (or we are done: then a no-op)
        yield "data: [DONE]\n\n"

    def _raise_if_cut_short(self, job: Job, done: Completion) -> None:
        if done.finish_reason == "timeout":
            raise Timeout(f"generation timed out after {job.timeout_s:g}s")
        if done.finish_reason == "shutdown":
            raise ShuttingDown("the server shut down during generation; try again later",
                               retry_after=self.engine.retry_after())


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


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    while not job.done.is_set():
        if await request.is_disconnected():
            job.stop("cancelled")
            return
        await asyncio.sleep(0.2)
