"""The /abort_requests call as workers hear it (published) and read it back (the
`interrupted` sorted set): round trips, and anything unreadable ignored, not raised."""

from __future__ import annotations

import pytest

from conveyor.interrupt_request import InterruptRequest, interrupt_memory


def test_a_call_round_trips_through_its_message_and_its_set_members() -> None:
    named = InterruptRequest(("chatcmpl-a", "cmpl-b"), 1700000000.5)
    every = InterruptRequest((), 1700000001.0)
    assert InterruptRequest.decode(named.encode()) == named
    assert InterruptRequest.decode(every.encode().encode()) == every
    assert every.every_request and not named.every_request
    rows = [*named.members().items(), *every.members().items()]
    assert InterruptRequest.from_members(rows) == [
        InterruptRequest(("chatcmpl-a",), 1700000000.5),
        InterruptRequest(("cmpl-b",), 1700000000.5),
        every,
    ]
    # An id that looks like the "every request" member is still one id.
    assert InterruptRequest.from_members(InterruptRequest(("*",), 1.0).members().items()) == [
        InterruptRequest(("*",), 1.0)
    ]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "[]",
        "nope",
        '{"ids": "a", "at": 1}',
        '{"ids": [1], "at": 1}',
        '{"ids": []}',
        '{"ids": [], "at": true}',
        '{"ids": [], "at": "1"}',
    ],
)
def test_an_unreadable_message_reads_as_none(raw: str | None) -> None:
    assert InterruptRequest.decode(raw) is None


def test_a_call_is_kept_past_the_request_timeout() -> None:
    assert interrupt_memory(600.0) > 600.0
