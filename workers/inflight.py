"""The requests a worker holds: read from its stream and not yet acknowledged.

Intake, janitor, engine loop, publisher and abort listener all need this one
fact, and back-pressure is defined by it: a worker takes a message only into
a free slot, and the slot is freed only after the message is XACKed, so the
worker's pending count in Redis never exceeds its capacity and queued work
stays in the stream for other workers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from conveyor.bus import INTERACTIVE_LANE
from conveyor.protocol import GenerateRequest
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams


@dataclass(frozen=True, eq=False)
class Ticket:
    """One delivered request: where it came from (to XACK it) and which delivery it is.

    `lane` is the lane of the stream the entry was read from (not what the payload
    claims): it picks the stream to XACK and the request's engine priority.
    """

    stream_id: str
    request: GenerateRequest
    attempt: int = 1
    params: SamplingParams | PoolingParams | None = None
    received: float = field(default_factory=time.time)
    lane: str = INTERACTIVE_LANE

    @property
    def request_id(self) -> str:
        return self.request.id


class Inflight:
    """Slots and tickets, under one condition variable (intake waits on it for a free slot).

    Taking work is two-phase so two readers (intake and janitor) can never
    over-commit: `reserve` claims free slots before reading from Redis,
    `admit` turns a reserved slot into a held ticket, `unreserve` returns the
    ones the read did not fill. Intake re-reserves every slot in a tight loop,
    so the janitor reserves with `priority`: intake waits while it does.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._tickets: dict[str, Ticket] = {}
        # (lane, entry id): ids are per stream, so two lanes may hold the same one.
        self._stream_ids: set[tuple[str, str]] = set()
        self._reserved = 0
        self._priority_waiters = 0

    def reserve(self, want: int, timeout: float = 0.0, priority: bool = False) -> int:
        """Reserve up to `want` free slots, waiting up to `timeout` s for one; returns how many."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if priority:
                self._priority_waiters += 1
            try:
                while True:
                    spare = self.capacity - len(self._tickets) - self._reserved
                    if spare > 0 and (priority or not self._priority_waiters):
                        got = min(spare, want)
                        self._reserved += got
                        return got
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return 0
                    self._cond.wait(remaining)
            finally:
                if priority:
                    self._priority_waiters -= 1
                    self._cond.notify_all()

    def unreserve(self, count: int) -> None:
        if count <= 0:
            return
        with self._cond:
            self._reserved = max(0, self._reserved - count)
            self._cond.notify_all()

    def admit(self, ticket: Ticket) -> bool:
        """Hold `ticket` in a reserved slot; False (slot returned) if its id is already held."""
        with self._cond:
            self._reserved = max(0, self._reserved - 1)
            if ticket.request_id in self._tickets:
                self._cond.notify_all()
                return False
            self._tickets[ticket.request_id] = ticket
            self._stream_ids.add((ticket.lane, ticket.stream_id))
            return True

    def remove(self, ticket: Ticket) -> None:
        """Free the slot once the ticket's message is acknowledged (or given up at exit)."""
        with self._cond:
            if self._tickets.get(ticket.request_id) is ticket:
                del self._tickets[ticket.request_id]
                self._stream_ids.discard((ticket.lane, ticket.stream_id))
                self._cond.notify_all()

    def get(self, request_id: str) -> Ticket | None:
        with self._cond:
            return self._tickets.get(request_id)

    def holds_stream_id(self, stream_id: str, lane: str = INTERACTIVE_LANE) -> bool:
        with self._cond:
            return (lane, stream_id) in self._stream_ids

    def __len__(self) -> int:
        with self._cond:
            return len(self._tickets)
