"""The API's drain after SIGTERM/SIGINT: finish what is in flight, then answer the rest.

uvicorn stops accepting connections at once and waits for open requests; left alone,
a request still running when it gives up is cut (a stream ends without `[DONE]`, a
non-streamed request without any response). So the drain has its own clock: in-flight
requests get `--drain-timeout` seconds to finish, then every one still waiting on a
worker ends with a 503 `shutting_down` (a stream: an error event and `[DONE]`), and
uvicorn's own limit, a few seconds later, finds nothing left to cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# uvicorn's graceful-shutdown limit is the drain plus this: time for the 503s to go out.
CLOSE_MARGIN_SECONDS = 5


class ShutdownDrain:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._end: Callable[[], None] | None = None
        self._begun = False
        self._began_at: float | None = None  # time.monotonic() of begin()

    def bind(self, loop: asyncio.AbstractEventLoop, end: Callable[[], None]) -> None:
        """Once serving (the lifespan): `end` ends every request still in flight."""
        self._loop, self._end = loop, end

    @property
    def begun(self) -> bool:
        """The server was told to stop (readiness fails from then on)."""
        return self._begun

    def remaining(self) -> float:
        """Seconds of the drain left: all of it before it began, 0 once it is over. What
        shutdown steps after uvicorn's (background responses) may still wait, so the
        whole stop fits the drain, not a drain and then another."""
        if self._began_at is None:
            return self.seconds
        return max(0.0, self.seconds - (time.monotonic() - self._began_at))

    def begin(self, at_once: bool = False) -> None:
        """The server was told to stop: start the clock (`at_once`: no drain, end what is in
        flight now). Safe from a signal handler."""
        if self._begun or self._loop is None or self._loop.is_closed():
            return
        if at_once:
            self.seconds = 0.0
        self._begun = True
        self._began_at = time.monotonic()
        self._loop.call_soon_threadsafe(self._loop.call_later, self.seconds, self._over)

    def _over(self) -> None:
        if self._end is not None:
            if self.seconds:
                logger.info("drain of %.0f s over: ending requests still in flight", self.seconds)
            self._end()
