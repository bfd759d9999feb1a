"""Issue 16, ingest item 4: POST /v1/news refuses an oversized body while it streams in, after
reading about the limit, instead of reading it whole first; and the reusable helper
(services/common/body_limit.py) on a real Starlette app."""

from __future__ import annotations

import select
import socket
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.common.body_limit import BodyLimitMiddleware, BodyTooLarge, read_limited
from services.common.broker import free_port
from services.common.bus import Producer, ensure_topics
from services.common.http_server import BackgroundServer, HealthApp
from services.common.settings import BusSettings
from services.common.topics import NEWS_RAW, dlq
from services.ingest.http_api import add_news_routes
from services.ingest.pipeline import IngestPipeline
from services.ingest.settings import IngestSettings

CHUNK = 64 * 1024
LIMIT = 8 * 1024 * 4  # max_item_bytes * max_batch below


@pytest.fixture
def ingest_port(bus_settings: BusSettings) -> Iterator[tuple[int, IngestPipeline]]:
    ensure_topics(bus_settings, [NEWS_RAW, dlq(NEWS_RAW)], "test")
    settings = IngestSettings(max_item_bytes=8 * 1024, max_batch=4)
    pipeline = IngestPipeline(settings, Producer(bus_settings, "ingest-test"))
    health = HealthApp("ingest-test")
    add_news_routes(health.app, pipeline)
    server = BackgroundServer(health.app, "127.0.0.1", free_port())
    server.start()
    yield server.port, pipeline
    server.stop()
    pipeline.close()


def stream_until_answered(port: int, total: int) -> tuple[int, bytes]:
    """POST a chunked body of up to `total` bytes, stopping as soon as the server answers or
    closes; returns the bytes sent and what the server said."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
    head = (
        "POST /v1/news HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    sent, frame = 0, f"{CHUNK:x}\r\n".encode() + b"[" * CHUNK + b"\r\n"
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (or closed) before the body ended
            sock.sendall(frame)
            sent += CHUNK
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = sock.recv(4096)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    finally:
        sock.close()
    return sent, answer


def test_an_endless_body_is_refused_after_about_the_limit(
    ingest_port: tuple[int, IngestPipeline],
) -> None:
    port, pipeline = ingest_port
    sent, answer = stream_until_answered(port, total=64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit of 32768" in answer
    # Socket buffers hold a few chunks in flight; the whole 64 MiB was never read.
    assert sent < 4 * 1024 * 1024, f"sent {sent} bytes before the answer"
    assert pipeline.stats.rejected == 1 and pipeline.stats.reconciles()


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    ingest_port: tuple[int, IngestPipeline],
) -> None:
    port, _ = ingest_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(
            b"POST /v1/news HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n" + b"[" * 10
        )
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"268435456 bytes (Content-Length)" in answer


# ---------------------------------------------------------------------------------------------
# The helper and the middleware, on a real Starlette app over ASGI
# ---------------------------------------------------------------------------------------------


async def echo_length(request: Request) -> JSONResponse:
    try:
        body = await read_limited(request, 1000)
    except BodyTooLarge as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)
    return JSONResponse({"length": len(body)})


async def raw_length(request: Request) -> JSONResponse:
    return JSONResponse({"length": len(await request.body())})


def app_with_limits() -> Starlette:
    app = Starlette(
        routes=[
            Route("/read", echo_length, methods=["POST"]),
            Route("/mw", raw_length, methods=["POST"]),
        ]
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=1000, paths=["/mw"])
    return app


async def chunks(n: int, size: int, pulled: list[int]) -> AsyncIterator[bytes]:
    for _ in range(n):
        pulled.append(size)
        yield b"x" * size


@pytest.mark.parametrize("path", ["/read", "/mw"])
def test_helper_and_middleware_stop_reading_at_the_limit(path: str) -> None:
    async def run() -> None:
        transport = httpx.ASGITransport(app=app_with_limits())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            fits = await client.post(path, content=b"x" * 1000)
            assert fits.json() == {"length": 1000}
            pulled: list[int] = []
            # httpx's ASGI transport pulls the next chunk only when the app asks for one.
            answer = await client.post(path, content=chunks(10_000, 100, pulled))
            assert answer.status_code == 413, answer.text
            assert "over the limit of 1000" in answer.json()["error"]
            assert sum(pulled) <= 1100, f"read {sum(pulled)} bytes of a 1,000,000-byte body"
            declared = await client.post(path, content=b"x" * 5000)
            assert declared.status_code == 413
            assert "5000 bytes (Content-Length)" in declared.text

    anyio.run(run)
