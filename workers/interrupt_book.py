"""Which requests `POST /abort_requests` asked to end, as one worker remembers it.

Kept for `keep_seconds` (the requests' timeout): a request sent before a call may still
be queued in a stream for that long, and whichever worker reads it must end it. A batch
line is never covered: it belongs to a batch job, which is cancelled as a whole
(POST /v1/batches/{id}/cancel).
"""

from __future__ import annotations

import time

from conveyor.bus import BATCH_LANE
from conveyor.interrupt_request import InterruptRequest
from workers.inflight import Ticket


class InterruptBook:
    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self._every_before = 0.0  # requests that arrived by then end
        self._ids: dict[str, float] = {}  # client id -> the latest call naming it

    def add(self, request: InterruptRequest) -> None:
        if request.every_request:
            self._every_before = max(self._every_before, request.at)
        for request_id in request.ids:
            self._ids[request_id] = max(self._ids.get(request_id, 0.0), request.at)
        self._forget_old()

    def covers(self, ticket: Ticket) -> bool:
        """Whether a call asked to end this request: one for every request, or one naming
        its client id, made after it arrived."""
        if ticket.lane == BATCH_LANE:
            return False
        arrival = ticket.request.arrival or ticket.received
        if arrival <= self._every_before:
            return True
        named_at = self._ids.get(ticket.request.client_id)
        return named_at is not None and arrival <= named_at

    def _forget_old(self) -> None:
        cutoff = time.time() - self.keep_seconds
        self._ids = {request_id: at for request_id, at in self._ids.items() if at >= cutoff}
