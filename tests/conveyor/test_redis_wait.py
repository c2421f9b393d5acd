"""Processes started before their Redis wait for it, then fail in one line."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from conveyor import redis_wait
from conveyor.embedded_redis import EmbeddedRedis
from conveyor.redis_wait import redacted, wait_for_redis

UNREACHABLE = "redis://127.0.0.1:1/0"


def test_a_reachable_redis_answers_at_once(redis_url: str) -> None:
    assert wait_for_redis(redis_url, timeout=0.0) is None


def test_an_unreachable_one_is_waited_for_then_named(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="conveyor.redis_wait"):
        error = wait_for_redis(UNREACHABLE, timeout=1.2)
    assert error is not None and "127.0.0.1:1" in error
    assert time.monotonic() - started >= 1.2
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("waiting up to 1 s for Redis at redis://127.0.0.1:1/0")


def test_one_that_comes_up_meanwhile_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_wait, "_RETRY_EVERY", 0.1)
    server = EmbeddedRedis()
    answers: list[str | None] = []
    # The wait runs in a thread and the server starts in this one: a child gets its
    # SIGTERM when the *thread* that spawned it ends (PR_SET_PDEATHSIG, child_process.py),
    # so a server started from a short-lived thread died as that thread returned, and the
    # wait saw 20 s of "connection refused" whenever it missed the moment between.
    waiter = threading.Thread(target=lambda: answers.append(wait_for_redis(server.url, 20.0)))
    waiter.start()
    try:
        time.sleep(0.5)
        server.start()
        waiter.join(timeout=30)
        assert answers == [None]
    finally:
        server.stop()


def test_passwords_stay_out_of_the_logs() -> None:
    assert redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("rediss://app:s3cret@redis/1") == "rediss://app:***@redis/1"
    assert redacted("redis://redis:6379") == "redis://redis:6379"
    assert redacted("redis://redis/0?password=s3cret&db=1") == "redis://redis/0?password=***&db=1"
