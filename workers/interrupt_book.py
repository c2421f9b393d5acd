"""Which requests `POST /abort_requests` asked to end, as one worker remembers it.

A call covers the requests queued before it: both times are Redis's own (a request's
stream entry id starts with the milliseconds Redis queued it at; the API stamps the
call with Redis's TIME), so API hosts with skewed clocks cannot move a request to the
wrong side of a call. Kept for `keep_seconds` (the requests' timeout): a request queued
before a call may still be waiting in a stream for that long, and whichever worker reads
it must end it. A batch line is never covered: it belongs to a batch job, which is
cancelled as a whole (POST /v1/batches/{id}/cancel).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from conveyor.bus import BATCH_LANE
from conveyor.interrupt_request import InterruptRequest
from workers.inflight import Ticket


def queued_at(ticket: Ticket) -> float:
    """When Redis queued the request (epoch seconds), from its stream entry id."""
    milliseconds, _, _ = ticket.stream_id.partition("-")
    try:
        return int(milliseconds) / 1000
    except ValueError:  # not a stream entry id: the API's own stamp
        return ticket.request.arrival or ticket.received


class InterruptBook:
    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self._every_before = 0.0  # requests queued by then end
        self._ids: dict[str, float] = {}  # client id -> the latest call naming it

    def add(self, requests: Iterable[InterruptRequest]) -> None:
        for request in requests:
            if request.every_request:
                self._every_before = max(self._every_before, request.at)
            for request_id in request.ids:
                self._ids[request_id] = max(self._ids.get(request_id, 0.0), request.at)
        cutoff = time.time() - self.keep_seconds
        self._ids = {request_id: at for request_id, at in self._ids.items() if at >= cutoff}

    def covers(self, ticket: Ticket) -> bool:
        """Whether a call asked to end this request: one for every request, or one naming
        its client id, made after it was queued."""
        if ticket.lane == BATCH_LANE:
            return False
        queued = queued_at(ticket)
        if queued <= self._every_before:
            return True
        named_at = self._ids.get(ticket.request.client_id)
        return named_at is not None and queued <= named_at
