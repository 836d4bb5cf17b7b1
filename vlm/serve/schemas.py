"""Pydantic models of the OpenAI-compatible API: the request bodies we accept and the responses we send.

Requests are strict: a field vlm does not know is a 400 naming it (as OpenAI's own API does), and an OpenAI
parameter that vlm does not implement (``tools``, ``logprobs``, ``presence_penalty``...) is accepted only at its
neutral value (absent, ``null``, ``false``, ``0``, ``[]``...), so that no request is silently answered as if
it had been honoured. A few fields that cannot change the answer (``user``, ``metadata``, ``service_tier``,
``safety_identifier``, ``prompt_cache_key``, ``parallel_tool_calls``, a message's ``name``, an image's
``detail``) are accepted and ignored. The same models generate the server's OpenAPI schema (``/openapi.json``).
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from vlm.config import GenerationOptions

from .errors import BadRequest

MAX_STOP_LENGTH = 128  # characters per stop sequence


class _Strict(BaseModel):
    """No unknown fields, no coercion (``0`` is not ``false``, ``5.0`` not ``5``): what the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _only(value, kind: type):
    """A parameter vlm does not implement: ``kind`` with exactly its neutral ``value`` (schema: ``const``)."""

    def check(v):
        if v != value:
            raise ValueError(f"only {json.dumps(value)} is accepted")
        return v

    return Annotated[kind, AfterValidator(check), WithJsonSchema({"const": value})]


# -- request ------------------------------------------------------------------------------------------------
class ImageURL(_Strict):
    url: str = Field(description="a base64 `data:` URL, or `http(s)` when the server allows remote images",
                     json_schema_extra={"pattern": "^(data:|https?://)"})  # checked by serve.remote_images
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None, description="accepted and ignored: vlm sees every image at its tower's one resolution")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Strict):
    url: str = Field(description="a base64 `data:video/...` URL, or `http(s)` when the server allows remote images",
                     json_schema_extra={"pattern": "^(data:|https?://)"})  # checked by serve.remote_images
    frames: int | None = Field(default=None, ge=1, description="frames sampled uniformly (default: the server's "
                               "--video-frames); each counts as one image of the request")


class VideoPart(_Strict):
    """An extension: a video, shown to the model as frames sampled uniformly with their times."""
    type: Literal["video_url"]
    video_url: VideoURL


Part = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None
    name: str | None = Field(default=None, description="accepted and ignored (a participant label)")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema",
        description="a flat object: string / number / integer / boolean properties, string enums, X-or-null; "
                    "keywords vlm cannot enforce (pattern, format, minimum...) are refused")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaFormat], Field(discriminator="type")]

# OpenAI parameters vlm does not implement: accepted only at their neutral value; the message says why.
UNSUPPORTED = {
    "n": "vlm returns one choice per request (n must be 1)",
    "logprobs": "vlm does not return log probabilities (logprobs must be false)",
    "top_logprobs": "vlm does not return log probabilities (top_logprobs must be 0)",
    "tools": "vlm has no tool (function) calling: send no tools",
    "tool_choice": "vlm has no tool (function) calling: tool_choice may only be 'none' or 'auto'",
    "functions": "vlm has no function calling: send no functions",
    "function_call": "vlm has no function calling: function_call may only be 'none' or 'auto'",
    "presence_penalty": "presence_penalty is not supported (must be 0); vlm has repetition_penalty as an extension",
    "frequency_penalty": "frequency_penalty is not supported (must be 0); vlm has repetition_penalty as an extension",
    "logit_bias": "logit_bias is not supported (must be empty)",
    "modalities": "vlm answers in text only (modalities may only be ['text'])",
    "audio": "vlm does not produce audio",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "verbosity": "verbosity is not supported",
    "web_search_options": "vlm does not search the web",
    "store": "vlm does not store completions (store must be false)",
}
_Nothing = Annotated[list[Any], Field(max_length=0)]


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Union[Annotated[str, Field(max_length=MAX_STOP_LENGTH)],
                Annotated[list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]], Field(max_length=4)], None] = None
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # extensions (as in vLLM's server; the openai client sends them with extra_body=...)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=16)
    ocr: Literal["auto", "always", "never"] | None = Field(
        default=None, description="vlm extension: each image's OCR text in the prompt beside it (vlm.grounding): "
        "auto = when OCR finds real text on the image, always, never; default: the server's (auto)")
    # OpenAI parameters that vlm does not implement: neutral values only (see UNSUPPORTED)
    n: _only(1, int) | None = None
    logprobs: _only(False, bool) | None = None
    top_logprobs: _only(0, int) | None = None
    tools: _Nothing | None = None
    tool_choice: Literal["none", "auto"] | None = None
    functions: _Nothing | None = None
    function_call: Literal["none", "auto"] | None = None
    presence_penalty: _only(0, float) | None = None
    frequency_penalty: _only(0, float) | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    modalities: list[Literal["text"]] | None = None
    audio: None = None
    prediction: None = None
    reasoning_effort: None = None
    verbosity: None = None
    web_search_options: None = None
    store: _only(False, bool) | None = None
    # accepted and ignored: they cannot change the answer
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def answer_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def generation_options(self, defaults: GenerationOptions) -> GenerationOptions:
        """The request's decoding options: the one place the API's parameters map onto vlm's; what it leaves
        unset comes from ``defaults`` (the server's). Raises ``ValueError`` for values vlm refuses."""
        return GenerationOptions.from_kwargs(
            defaults, max_new_tokens=self.answer_budget, temperature=self.temperature, top_p=self.top_p,
            seed=self.seed, stop=self.stops or None, repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size)

    @property
    def json_schema(self) -> tuple[bool, dict | None]:
        """``(wants_json, schema)``: JSON asked for, and the JSON Schema it must satisfy (None: any object)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return False, None
        if fmt.type == "json_object":
            return True, None
        return True, fmt.json_schema.schema_


# Location parts pydantic adds for union branches ("str", "list[...]", "tagged-union[...]"), not fields.
_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|function-.*|literal\[.*\]|constrained-.*|.*\[.*\])$")


_TAGS = {"text", "image_url", "video_url", "json_object", "json_schema"}


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validate a JSON body; any problem becomes one :class:`BadRequest` naming the field."""
    try:
        req = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # of a union's failures, the one that got furthest, preferring a broken rule over a wrong type
        err = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
        if err["type"] == "json_invalid":
            raise BadRequest(f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}") from None
        if err["type"] == "model_type" and not err["loc"]:
            raise BadRequest("the request body must be a JSON object") from None
        loc = [str(p) for p in err["loc"] if not _UNION_BRANCH.match(str(p).lower())]
        # a tagged union repeats the tag after the index: content.0.text.text -> content.0.text
        loc = [p for i, p in enumerate(loc) if not (0 < i < len(loc) - 1 and loc[i - 1].isdigit() and p in _TAGS)]
        # ... and after a field: response_format.json_schema.json_schema -> response_format.json_schema
        loc = [p for i, p in enumerate(loc) if not (i > 0 and p in _TAGS and loc[i - 1] == "response_format")]
        param = ".".join(loc) or None
        if loc and loc[0] in UNSUPPORTED and len(errors) >= 1 and all(
                e["loc"] and str(e["loc"][0]) == loc[0] for e in errors):
            raise BadRequest(f"unsupported parameter '{loc[0]}': {UNSUPPORTED[loc[0]]}", param=loc[0]) from None
        if err["type"] == "extra_forbidden":
            what = "parameter" if len(loc) == 1 else "field"
            raise BadRequest(f"unknown {what} '{param}': vlm's chat completions API does not accept it",
                             param=param) from None
        where = f"'{param}': " if param else ""
        raise BadRequest(f"invalid request: {where}{err['msg']}", param=param) from None
    if req.stream_options is not None and not req.stream:
        raise BadRequest("stream_options is only allowed when stream is true", param="stream_options")
    return req


# -- responses (documentation of what the server sends; see openai_api) ---------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")  # the engine's counters ride along

    status: Literal["ok", "draining", "unhealthy"]
    reason: str | None
    model: str
    context_length: int
    running: int
    queued: int
