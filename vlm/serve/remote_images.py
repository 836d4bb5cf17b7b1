"""Turn an ``image_url`` (or a ``video_url``, :func:`video_bytes`) from a request into bytes, under a strict
fetch policy.

* ``data:`` base64 URLs always work (decoded by :mod:`vlm.images`).
* ``file:`` URLs, bare paths and other schemes are always refused: a client must never make the
  server read its own disk.
* ``http(s)`` URLs are refused unless the policy enables them. Then every address the host resolves to
  must be public (no loopback, private, link-local, multicast, reserved...), the connection goes to the
  address we checked (no second DNS lookup to rebind), each redirect is checked the same way, and the
  body is cut off at ``max_bytes`` and ``timeout_s`` (total, not per read).
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from vlm.config import InputLimits
from vlm.images import read_image_bytes

from .config import RemoteImagePolicy
from .errors import BadRequest, TooLarge

_REDIRECTS = {301, 302, 303, 307, 308}


def _address_allowed(ip: ipaddress._BaseAddress, policy: RemoteImagePolicy) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(net, strict=False) for net in policy.allowed_networks):
        return True
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local)


def resolve_public(host: str, port: int, policy: RemoteImagePolicy) -> list[str]:
    """All addresses of ``host``; refuses the URL if any one of them is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadRequest(f"cannot resolve image host {host!r}: {exc}", param="messages") from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise BadRequest(f"image host {host!r} has no addresses", param="messages")
    for addr in addresses:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if not _address_allowed(ip, policy):
            raise BadRequest(
                f"image URL host {host!r} resolves to {addr}, a loopback/private/reserved address; refused",
                param="messages", code="image_url_forbidden",
            )
    return addresses


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed IP, with SNI and certificate checks against the URL's host name."""

    def __init__(self, ip: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, ip: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


def _split(url: str):
    """``urlsplit`` and the port, or a :class:`BadRequest` for a URL that is not one (a bad IPv6 host, port...)."""
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as exc:
        raise BadRequest(f"image URL is not a valid URL ({exc}): {url[:80]!r}", param="messages") from None


def _get_once(url: str, policy: RemoteImagePolicy, deadline: float):
    """One GET with no redirect following. Returns ``(status, location, body)``."""
    parts, port = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"image URL must be http(s) with a host, got {url[:80]!r}", param="messages")
    port = port or (443 if parts.scheme == "https" else 80)
    ip = resolve_public(parts.hostname, port, policy)[0]
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BadRequest(f"fetching the image URL took over {policy.timeout_s:g}s", param="messages")
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = cls(ip, parts.hostname, port, timeout=remaining)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request("GET", path, headers={"User-Agent": "vlm-serve", "Accept": "image/*"})
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            return resp.status, resp.getheader("Location"), b""
        if resp.status != 200:
            raise BadRequest(f"image URL answered HTTP {resp.status}", param="messages")
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > policy.max_bytes:
            raise TooLarge(f"image URL body is {length} bytes; the limit is {policy.max_bytes}", param="messages")
        chunks, total = [], 0
        while True:
            if time.monotonic() > deadline:
                raise BadRequest(f"fetching the image URL took over {policy.timeout_s:g}s", param="messages")
            chunk = resp.read1(64 * 1024) if hasattr(resp, "read1") else resp.read(64 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total > policy.max_bytes:
                raise TooLarge(f"image URL body is over the {policy.max_bytes}-byte limit", param="messages")
            chunks.append(chunk)
        return 200, None, b"".join(chunks)
    except (socket.timeout, TimeoutError):
        raise BadRequest(f"fetching the image URL took over {policy.timeout_s:g}s", param="messages") from None
    except (OSError, http.client.HTTPException, UnicodeError) as exc:  # UnicodeError: a path http cannot send
        raise BadRequest(f"could not fetch the image URL: {exc}", param="messages") from None
    finally:
        conn.close()


def fetch(url: str, policy: RemoteImagePolicy) -> bytes:
    """Download an http(s) image under ``policy``, checking every redirect hop."""
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(policy.max_redirects + 1):
        status, location, body = _get_once(url, policy, deadline)
        if status == 200:
            return body
        if not location:
            raise BadRequest(f"image URL redirect ({status}) has no Location", param="messages")
        try:
            url = urljoin(url, location)
        except ValueError as exc:
            raise BadRequest(f"image URL redirect has an invalid Location ({exc})", param="messages") from None
    raise BadRequest(f"image URL redirected more than {policy.max_redirects} times", param="messages")


def image_bytes(url: object, policy: RemoteImagePolicy, limits: InputLimits) -> bytes:
    """Bytes for one ``image_url.url`` from an API request (never a local path)."""
    if not isinstance(url, str) or not url:
        raise BadRequest("image_url.url must be a non-empty string", param="messages")
    scheme = _split(url)[0].scheme.lower() if ":" in url else ""
    if scheme == "data":
        data = read_image_bytes(url, limits) if _fits(url, limits) else None
        if data is None:
            raise TooLarge(f"data URL image is over the {limits.max_image_bytes}-byte limit", param="messages")
        return data
    if scheme in ("http", "https"):
        if not policy.enabled:
            raise BadRequest(
                "remote image URLs are disabled on this server (start it with --allow-remote-images); "
                "send the image as a base64 data: URL",
                param="messages", code="image_url_forbidden",
            )
        data = fetch(url, policy)
        if len(data) > limits.max_image_bytes:
            raise TooLarge(f"remote image is {len(data)} bytes; the limit is {limits.max_image_bytes}",
                           param="messages")
        return data
    shown = scheme or "a local path"
    raise BadRequest(f"image URLs must be data: or http(s): URLs; {shown} is not allowed",
                     param="messages", code="image_url_forbidden")


def _fits(data_url: str, limits: InputLimits) -> bool:
    """Check the decoded size of a base64 data URL from its length, before decoding."""
    payload = data_url.partition(",")[2]
    return len(payload) * 3 // 4 - payload.count("=") <= limits.max_image_bytes + 3


def video_bytes(url: object, policy: RemoteImagePolicy, max_bytes: int) -> bytes:
    """Bytes for one ``video_url.url``: the same rules as images (``data:`` always, ``http(s)`` only when remote
    images are allowed, never a local path), up to ``max_bytes``."""
    if not isinstance(url, str) or not url:
        raise BadRequest("video_url.url must be a non-empty string", param="messages")
    scheme = _split(url)[0].scheme.lower() if ":" in url else ""
    if scheme == "data":
        payload = url.partition(",")[2]
        if len(payload) * 3 // 4 - payload.count("=") > max_bytes:
            raise TooLarge(f"data URL video is over the {max_bytes}-byte limit", param="messages")
        from vlm.video import VideoOptions, read_video_bytes

        return read_video_bytes(url, VideoOptions(max_bytes=max_bytes))
    if scheme in ("http", "https"):
        if not policy.enabled:
            raise BadRequest("remote video URLs are disabled on this server (start it with --allow-remote-images); "
                             "send the video as a base64 data: URL", param="messages", code="image_url_forbidden")
        data = fetch(url, policy)
        if len(data) > max_bytes:
            raise TooLarge(f"remote video is {len(data)} bytes; the limit is {max_bytes}", param="messages")
        return data
    shown = scheme or "a local path"
    raise BadRequest(f"video URLs must be data: or http(s): URLs; {shown} is not allowed",
                     param="messages", code="image_url_forbidden")
