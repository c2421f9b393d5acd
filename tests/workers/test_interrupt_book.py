"""Which requests an /abort_requests call covers, by Redis's clock (the stream entry id),
whatever the API hosts' clocks say."""

from __future__ import annotations

import time

from conveyor.bus import BATCH_LANE
from conveyor.interrupt_request import InterruptRequest
from conveyor.protocol import GenerateRequest
from workers.inflight import Ticket
from workers.interrupt_book import InterruptBook, queued_at


def ticket(
    queued_ms: int, arrival: float, public_id: str | None = None, lane: str = "interactive"
) -> Ticket:
    request = GenerateRequest(
        id="req-1",
        reply_to="api",
        model="m",
        prompt_token_ids=[1],
        sampling={},
        arrival=arrival,
        public_id=public_id,
    )
    return Ticket(f"{queued_ms}-0", request, lane=lane)


def test_the_stream_entrys_time_decides_not_the_api_hosts_clock() -> None:
    book = InterruptBook(keep_seconds=10**10)
    book.add([InterruptRequest((), 2.0)])
    # Queued at 1.0 s by Redis, stamped 5.0 by an API host whose clock runs ahead.
    assert book.covers(ticket(1_000, arrival=5.0))
    # Queued at 3.0 s, stamped 1.5 by one whose clock runs behind.
    assert not book.covers(ticket(3_000, arrival=1.5))
    assert queued_at(ticket(2_500, arrival=0.0)) == 2.5


def test_an_id_covers_what_was_queued_before_its_call_and_batch_lines_never() -> None:
    book = InterruptBook(keep_seconds=10**10)
    book.add([InterruptRequest(("chatcmpl-a",), 2.0)])
    assert book.covers(ticket(1_000, 0.0, "chatcmpl-a"))
    assert not book.covers(ticket(3_000, 0.0, "chatcmpl-a"))  # sent again after
    assert not book.covers(ticket(1_000, 0.0, "chatcmpl-b"))
    book.add([InterruptRequest((), 4.0)])
    assert not book.covers(ticket(1_000, 0.0, lane=BATCH_LANE))


def test_calls_older_than_the_memory_are_forgotten() -> None:
    book = InterruptBook(keep_seconds=60)
    now = time.time()
    book.add([InterruptRequest(("old",), now - 120), InterruptRequest(("new",), now)])
    assert not book.covers(ticket(int((now - 200) * 1000), 0.0, "old"))
    assert book.covers(ticket(int((now - 200) * 1000), 0.0, "new"))
