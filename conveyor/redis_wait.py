"""Start-up waits for Redis: a process started before its Redis (compose, a pod
restarted ahead of it) waits a while, saying so, rather than dying with a
traceback; one that still cannot reach it exits 1 with one line that says why."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

logger = logging.getLogger(__name__)

REDIS_STARTUP_WAIT = 30.0
_RETRY_EVERY = 1.0


def redacted(url: str) -> str:
    """The URL for a log line: any password replaced (redis-py also reads one from the
    query, `?password=...`)."""
    parts = urlsplit(url)
    if parts.query:
        query = [
            (key, "***" if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
        parts = parts._replace(netloc=f"{user}:***@{host}{port}")
    return urlunsplit(parts)


def wait_for_redis(
    url: str, timeout: float | None = None, *, stopping: Callable[[], bool] | None = None
) -> str | None:
    """None once Redis answers a PING; else, after `timeout` seconds (default
    REDIS_STARTUP_WAIT) or as soon as `stopping()` (a signal came), the last error."""
    timeout = REDIS_STARTUP_WAIT if timeout is None else timeout
    give_up = time.monotonic() + timeout
    warned = False
    while True:
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
                client.ping()
            if warned:
                logger.info("Redis at %s answers", redacted(url))
            return None
        except redis.RedisError as exc:
            error = str(exc) or type(exc).__name__
        if time.monotonic() >= give_up or (stopping is not None and stopping()):
            return error
        if not warned:
            logger.warning(
                "waiting up to %.0f s for Redis at %s (%s)", timeout, redacted(url), error
            )
            warned = True
        time.sleep(min(_RETRY_EVERY, max(0.0, give_up - time.monotonic())))


def redis_answers_at_start(url: str, *, stopping: Callable[[], bool] | None = None) -> bool:
    """`wait_for_redis`, logging the one line a process exits with when it gives up."""
    unreachable = wait_for_redis(url, stopping=stopping)
    if unreachable is not None and not (stopping is not None and stopping()):
        logger.error("cannot reach Redis at %s: %s", redacted(url), unreachable)
    return unreachable is None
