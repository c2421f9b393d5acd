"""Connections that do not send a request's headers in time are closed; a request whose
headers are in is never cut, however long its answer takes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from api.header_timeout import with_header_timeout
from api.server import uvicorn_config
from conveyor.embedded_redis import free_port
from conveyor.settings import Settings

LIMIT = 0.5


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers in pieces over three times the limit."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for piece in range(4):
        await asyncio.sleep(LIMIT / 2)
        await send({"type": "http.response.body", "body": b"%d" % piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        slow_app, port=port, log_level="warning", http=with_header_timeout(LIMIT), lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def closed_after(sock: socket.socket, trickle: bytes = b"") -> float:
    """Seconds until the server closes `sock` (sending `trickle` a byte at a time)."""
    started = time.monotonic()
    sock.settimeout(LIMIT / 5)
    for byte in trickle:
        sock.sendall(bytes([byte]))
        try:
            if sock.recv(100) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
    sock.settimeout(10)
    assert sock.recv(100) == b""
    return time.monotonic() - started


def test_a_silent_connection_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert LIMIT * 0.8 < closed_after(sock) < LIMIT * 4


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_limit(port: int) -> None:
    """Slowloris: every byte arrives in time for a read, never the whole headers."""
    trickle = b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert closed_after(sock, trickle) < LIMIT * 4


def test_a_long_answer_is_not_cut_and_the_next_request_gets_its_own_limit(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        received = b""
        while not received.endswith(b"0\r\n\r\n"):  # the chunked body's end
            piece = sock.recv(1000)
            assert piece, f"closed mid-answer: {received!r}"
            received += piece
        assert received.startswith(b"HTTP/1.1 200") and b"3\r\n" in received
        # Kept alive after the answer, for no longer than the limit without a request.
        assert closed_after(sock) < LIMIT * 4


def test_the_api_serves_with_the_configured_limit() -> None:
    config = uvicorn_config(object(), Settings(http_header_timeout=7.5))  # type: ignore[arg-type]
    assert config.http.header_timeout == 7.5  # type: ignore[union-attr]
