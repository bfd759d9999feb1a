"""Request bodies read with a size limit enforced while they stream in, so an oversized body is
refused after at most `limit` bytes (plus one chunk) instead of being held in memory whole.

Two ways to use it: `await read_limited(request, limit)` inside a route that reads its own body,
or `app.add_middleware(BodyLimitMiddleware, max_bytes=..., paths=(...))` in front of routes that
read the body themselves (a framework's). Starlette has no such limit of its own, and uvicorn's
only bounds the header part, hence these few lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """The body is over the limit; `str()` says by how much, for a 413's error text."""

    status_code = 413

    def __init__(self, limit: int, seen: int, declared: int | None = None) -> None:
        self.limit, self.seen, self.declared = limit, seen, declared
        if declared is not None:
            text = f"request body is {declared} bytes (Content-Length), over the limit of {limit}"
        else:
            text = f"request body is over the limit of {limit} bytes (refused at byte {seen})"
        super().__init__(text)


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length header as an int; None when absent or not a number (uvicorn refuses
    a malformed one before the app sees it)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it is known to exceed `limit` bytes: at once
    from Content-Length, else once more than `limit` bytes have streamed in."""
    declared = declared_length(request.headers.raw)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, declared, declared)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit, limit + 1)
    return bytes(body)


class BodyLimitMiddleware:
    """ASGI middleware: requests to `paths` (prefixes; empty: all) with a body over `max_bytes`
    get a JSON 413 before the app runs. The body is read ahead (at most `max_bytes`) and handed
    on unchanged, so the app reads it as usual."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: Iterable[str] = ()) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, tuple(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
        except BodyTooLarge as exc:
            await _send_413(send, str(exc))
            return
        if body is None:  # the client went away mid-body: there is no request to answer
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:  # after the body, the app waits for the disconnect as usual
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _applies(self, path: str) -> bool:
        return not self.paths or any(path.startswith(p) for p in self.paths)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = declared_length(scope.get("headers", []))
        if declared is not None and declared > self.max_bytes:
            raise BodyTooLarge(self.max_bytes, declared, declared)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                raise BodyTooLarge(self.max_bytes, self.max_bytes + 1)
            if not message.get("more_body", False):
                return bytes(body)


async def _send_413(send: Send, error: str) -> None:
    payload = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
