"""Say a recurring problem once, then again only every so often.

A batch worker runs many lines at once, and while the API is down or refuses
the worker's key every one of them waits and retries: logged per retry, one
outage is thousands of identical lines; logged never, the operator sees a
batch that does not move and no reason why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LogThrottle:
    """`ready(kind)` is true the first time for `kind`, then once per `interval` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # batches run on a thread pool, each with its own loop

    def ready(self, kind: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                return False
            self._last[kind] = now
            return True
