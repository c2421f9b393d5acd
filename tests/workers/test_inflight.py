"""Slot accounting that back-pressure rests on."""

from __future__ import annotations

import threading
import time

from conveyor.protocol import GenerateRequest
from workers.inflight import Inflight, Ticket


def ticket(request_id: str, stream_id: str = "1-0") -> Ticket:
    return Ticket(stream_id, GenerateRequest(request_id, "api", "m", [1], {}))


def test_reservations_and_tickets_never_exceed_capacity() -> None:
    slots = Inflight(capacity=2)
    assert slots.reserve(5) == 2
    assert slots.reserve(1) == 0  # both reserved, none free
    first = ticket("a", "1-0")
    assert slots.admit(first)
    assert not slots.admit(ticket("a", "2-0"))  # same request id: refused, slot returned
    assert slots.reserve(1) == 1
    slots.unreserve(1)
    assert len(slots) == 1 and slots.holds_stream_id("1-0")
    slots.remove(ticket("a", "1-0"))  # not the held object: nothing happens
    assert len(slots) == 1
    slots.remove(first)
    assert len(slots) == 0 and slots.reserve(2) == 2


def test_priority_reservation_is_not_starved_by_a_tight_loop() -> None:
    slots = Inflight(capacity=1)
    stop = threading.Event()

    def intake() -> None:  # reserve, "block on Redis", give back, repeat
        while not stop.is_set():
            got = slots.reserve(1, timeout=0.05)
            time.sleep(0.02)
            slots.unreserve(got)

    thread = threading.Thread(target=intake)
    thread.start()
    try:
        time.sleep(0.01)
        assert slots.reserve(1, timeout=0.5, priority=True) == 1
    finally:
        stop.set()
        thread.join()
