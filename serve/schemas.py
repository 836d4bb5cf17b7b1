"""Pydantic models for the OpenAI-compatible request bodies we accept."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequest


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    # extensions (as in vLLM's server; the openai client sends them with extra_body=...)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > 4:
            raise BadRequest(f"at most 4 stop sequences are allowed, got {len(stops)}", param="stop")
        return stops

    @property
    def answer_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# Location parts pydantic adds for union branches ("str", "list[...]", "tagged-union[...]"), not fields.
_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|function-.*|.*\[.*\])$")


_TAGS = {"text", "image_url"}


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Validate a JSON body; any problem becomes one :class:`BadRequest` naming the field."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        err = max(errors, key=lambda e: len(e["loc"]))  # of a union's failures, the one that got furthest
        if err["type"] == "json_invalid":
            raise BadRequest(f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}") from None
        loc = [str(p) for p in err["loc"] if not _UNION_BRANCH.match(str(p))]
        # a tagged union repeats the tag after the index: content.0.text.text -> content.0.text
        loc = [p for i, p in enumerate(loc) if not (0 < i < len(loc) - 1 and loc[i - 1].isdigit() and p in _TAGS)]
        param = ".".join(loc) or None
        where = f"'{param}': " if param else ""
        raise BadRequest(f"invalid request: {where}{err['msg']}", param=param) from None
