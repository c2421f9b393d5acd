"""The abort thread: client disconnects, broadcast on `conveyor:abort`, and
`POST /abort_requests` calls, on `conveyor:interrupt`, reach the engine loop.

Every worker hears every abort (pub/sub fan-out; the API does not know which
worker holds a request), so each forwards only the ids it holds. Subscribing
happens in `start()`, before the worker takes any request, so no abort for
one of its requests can slip past. An /abort_requests call may name requests
still queued, which any worker may read later: each is forwarded, and on every
(re)subscription the recent calls are read back from the `interrupted` set, so
a worker started (or reconnected) after a call still ends what it covers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.client import PubSub

from conveyor.bus import BusNames
from conveyor.interrupt_request import InterruptRequest
from workers.inflight import Inflight

logger = logging.getLogger(__name__)

_POLL = 0.1
_RECONNECT_WAIT = 0.5


class AbortListener:
    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        inflight: Inflight,
        on_abort: Callable[[str], None],
        on_interrupt: Callable[[InterruptRequest], None],
        interrupt_memory: float,
    ) -> None:
        self.client = client
        self.channel = names.abort
        self.interrupt_channel = names.interrupt
        self.interrupted = names.interrupted
        self.inflight = inflight
        self.on_abort = on_abort
        self.on_interrupt = on_interrupt
        self.interrupt_memory = interrupt_memory
        self._pubsub: PubSub | None = None

    def subscribe(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel, self.interrupt_channel)
        self._pubsub = pubsub
        # After subscribing: a call made meanwhile is heard twice, which is harmless.
        rows = self.client.zrangebyscore(
            self.interrupted, time.time() - self.interrupt_memory, "+inf", withscores=True
        )
        for request in InterruptRequest.from_members(rows):
            self.on_interrupt(request)

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                if self._pubsub is None:
                    self.subscribe()
                self._listen(stopping)
            except redis.RedisError as exc:
                logger.warning("abort subscription lost (%s); resubscribing", exc)
                self._close()
                stopping.wait(_RECONNECT_WAIT)
        self._close()

    def _listen(self, stopping: threading.Event) -> None:
        assert self._pubsub is not None
        while not stopping.is_set():
            message = self._pubsub.get_message(timeout=_POLL)
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            if _text(message["channel"]) == self.interrupt_channel:
                request = InterruptRequest.decode(data)
                if request is None:
                    logger.warning("ignoring an unreadable /abort_requests call: %r", data)
                else:
                    self.on_interrupt(request)
                continue
            request_id = _text(data)
            if self.inflight.get(request_id) is not None:
                self.on_abort(request_id)

    def _close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
