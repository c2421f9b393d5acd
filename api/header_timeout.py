"""Close connections that do not finish sending a request's headers in time.

uvicorn waits for a request's line and headers for ever: a connection that sends
nothing, or a few bytes now and then (slowloris), holds a socket and a file
descriptor until the client leaves, and enough of them exhaust the process's
descriptors. Its keep-alive timeout covers only the gap after a response, and
any byte cancels it. Here every wait for the next request (a new connection, or
one whose response just ended) has a limit; once a request's headers are in,
the limit is off (a slow body or a long answer is not cut).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderTimeoutProtocol(H11Protocol):
    header_timeout: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own limit

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _overdue(self) -> None:
        self._header_timer = None
        # IDLE: no request line and headers complete since the limit began (a request
        # under way is past IDLE, as is one whose answer is being written).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a limit of `seconds` on each request's headers."""
    return type("HeaderTimeoutH11Protocol", (_HeaderTimeoutProtocol,), {"header_timeout": seconds})
