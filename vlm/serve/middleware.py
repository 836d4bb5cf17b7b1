"""ASGI middleware around the whole app (the API and the Gradio UI mounted at ``/``).

- Every HTTP response carries ``x-request-id``; handlers read the id from ``request.state.request_id`` and
  log under it.
- An exception that escapes the app before the response started becomes a 500 OpenAI ``server_error`` that
  names the id, and its traceback is logged (logger ``vlm.serve``) under that id; every 5xx response gets a
  warning line with the id, method and path.
- The generic routing answers of the UI app (``{"detail": "Not Found"}`` / ``"Method Not Allowed"``) are
  rewritten as OpenAI error objects (``Allow`` kept); the UI's specific errors are left as they are.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.datastructures import MutableHeaders

from .engine import new_request_id
from .errors import ServeError

log = logging.getLogger("vlm.serve")
_GENERIC = {b'{"detail":"Not Found"}': 404, b'{"detail":"Method Not Allowed"}': 405}


class RequestIds:
    """``on_error(exc, request_id, while_doing) -> ServeError`` logs an escaped exception and returns the
    error the client gets; ``routing_error(status, method, path, headers) -> ServeError`` builds 404/405s."""

    def __init__(self, app, on_error: Callable[[BaseException, str, str], ServeError],
                 routing_error: Callable[..., ServeError]):
        self.app = app
        self.on_error = on_error
        self.routing_error = routing_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        method, path = scope.get("method", "?"), scope.get("path", "?")
        state = {"started": False, "status": None, "held": None, "body": b""}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                state["started"], state["status"] = True, message["status"]
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                headers["x-request-id"] = rid
                message = {**message, "headers": headers.raw}
                if message["status"] in (404, 405) and headers.get("content-type", "").startswith("application/json"):
                    state["held"] = message  # maybe a generic routing answer: look at the body first
                    return
            elif message["type"] == "http.response.body" and state["held"] is not None:
                state["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                start, body = state["held"], state["body"]
                state["held"] = None
                if _GENERIC.get(body) == start["status"]:
                    headers = MutableHeaders(raw=start["headers"])
                    err = self.routing_error(start["status"], method, path, {"Allow": headers.get("allow", "")})
                    body = json.dumps(err.to_dict()).encode()
                    headers["content-length"] = str(len(body))
                    start = {**start, "headers": headers.raw}
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            err = self.on_error(exc, rid, f"handling {method} {path}")
            if state["started"]:
                return  # logged; the connection ends with the response cut short
            body = json.dumps(err.to_dict()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send_with_id({"type": "http.response.start", "status": err.status, "headers": headers})
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            status = state["status"]
            if status is not None and status >= 500:
                log.warning("request %s: %s %s -> %d", rid, method, path, status)
