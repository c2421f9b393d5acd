"""The abort thread: client disconnects, broadcast on `conveyor:abort`, reach the engine loop.

Every worker hears every abort (pub/sub fan-out; the API does not know which
worker holds a request), so each forwards only the ids it holds. Subscribing
happens in `start()`, before the worker takes any request, so no abort for
one of its requests can slip past.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import redis
from redis.client import PubSub

from conveyor.bus import BusNames
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
    ) -> None:
        self.client = client
        self.channel = names.abort
        self.inflight = inflight
        self.on_abort = on_abort
        self._pubsub: PubSub | None = None

    def subscribe(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        self._pubsub = pubsub

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
            request_id = data.decode() if isinstance(data, bytes) else str(data)
            if self.inflight.get(request_id) is not None:
                self.on_abort(request_id)

    def _close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None
