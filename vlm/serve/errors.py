"""Errors the server reports, each carrying its HTTP status and OpenAI error ``type`` / ``code``."""
from __future__ import annotations

from vlm.errors import InputError


class ServeError(Exception):
    """A request that cannot be served. ``str(err)`` is the user-facing message."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, retry_after: int | None = None, request_id: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.request_id = request_id  # set on server errors: the id their traceback is logged under
        self.headers = dict(headers or {})

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.retry_after is not None:
            out["Retry-After"] = str(self.retry_after)
        return out


class BadRequest(ServeError, InputError):
    """Malformed body, bad image, bad option (400). Also an ``InputError`` for library callers."""


class TooLarge(BadRequest):
    status = 413
    code = "request_too_large"


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"


class Flagged(BadRequest):
    code = "content_policy_violation"


class Unauthorized(ServeError):
    status = 401
    code = "invalid_api_key"


class ModelNotFound(ServeError):
    status = 404
    code = "model_not_found"


class RouteNotFound(ServeError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ServeError):
    """A known route asked with a method it does not answer; carries the ``Allow`` header."""

    status = 405
    code = "method_not_allowed"


class Busy(ServeError):
    """The queue is full (429) or the server is shutting down (503); both carry Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ShuttingDown(Busy):
    status = 503
    type = "server_error"
    code = "shutting_down"


class Timeout(ServeError):
    status = 504
    type = "server_error"
    code = "timeout"


class Internal(ServeError):
    """A failure inside the server (a bug, a broken model): the message names the request id its traceback
    is logged under, never the internal message."""

    status = 500
    type = "server_error"
    code = "internal_error"
