"""The intake's handling of one delivered entry: held before it is prepared, so the janitor
never takes it back while a grammar compiles, and a second delivery of the same entry is
dropped quietly (only a different entry reusing a request id is an error)."""

from __future__ import annotations

import queue
from typing import Any

from conveyor.bus import REQUEST_FIELD, BusNames
from conveyor.protocol import GenerateRequest
from workers.inflight import Inflight
from workers.intake import Intake
from workers.publisher import Failed


class _Publisher:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def put(self, event: Any) -> None:
        self.events.append(event)


def _intake(
    inflight: Inflight, publisher: _Publisher, work: queue.Queue[Any], **options: Any
) -> Intake:
    return Intake(
        None,  # type: ignore[arg-type]  # accept() never touches Redis
        BusNames("t-intake"),
        "m",
        "w1",
        inflight,
        publisher,  # type: ignore[arg-type]
        work,
        lambda: None,
        **options,
    )


def test_an_entry_is_held_while_prepared_and_delivered_twice_it_runs_once() -> None:
    inflight = Inflight(3)
    publisher = _Publisher()
    work: queue.Queue[Any] = queue.Queue()
    held_while_preparing: list[bool] = []
    intake = _intake(
        inflight,
        publisher,
        work,
        prepare=lambda _: held_while_preparing.append(inflight.holds_stream_id("1-0")),
    )
    request = GenerateRequest(
        id="r1", reply_to="api", model="m", prompt_token_ids=[1, 2], sampling={"max_tokens": 2}
    )
    fields = {REQUEST_FIELD: request.encode()}
    assert inflight.reserve(3) == 3
    intake.accept("1-0", fields, attempt=1)
    intake.accept("1-0", fields, attempt=2)  # the janitor raced intake for the same entry
    assert held_while_preparing == [True]
    assert publisher.events == [] and work.qsize() == 1
    # Another entry reusing the request id is the client's mistake: a 400.
    intake.accept("2-0", fields, attempt=1)
    (failed,) = publisher.events
    assert isinstance(failed, Failed) and failed.error.param == "id"
    assert "already being served" in failed.error.message
    assert len(inflight) == 1


def test_a_classifiers_worker_takes_only_classifications() -> None:
    """An API of the release before knows no classifiers: its embedding requests reach a
    classifier's worker without `task`, and must not come back as vectors of labels'
    probabilities."""
    inflight = Inflight(3)
    publisher = _Publisher()
    work: queue.Queue[Any] = queue.Queue()
    intake = _intake(inflight, publisher, work, classifier=True)
    assert inflight.reserve(3) == 3
    for entry, pooling in (("1-0", {"dimensions": None}), ("2-0", {"task": "classify"})):
        request = GenerateRequest(
            id=entry, reply_to="api", model="m", prompt_token_ids=[1, 2], sampling={},
            pooling=pooling,
        )  # fmt: skip
        intake.accept(entry, {REQUEST_FIELD: request.encode()}, attempt=1)
    (failed,) = publisher.events
    assert isinstance(failed, Failed) and failed.ticket.request.id == "1-0"
    assert failed.error.status == 400 and "classifier" in failed.error.message
    assert work.qsize() == 1


def test_a_bert_cross_encoders_worker_takes_only_marked_pairs() -> None:
    """An API of the release before sends a pair to BERT without its token types: a
    plausible but wrong score, so the worker refuses it rather than answer."""
    inflight = Inflight(3)
    publisher = _Publisher()
    work: queue.Queue[Any] = queue.Queue()
    intake = _intake(inflight, publisher, work, classifier=True, reads_token_types=True)
    assert inflight.reserve(3) == 3
    unmarked = {"task": "classify"}
    for entry, pooling in (("1-0", unmarked), ("2-0", {**unmarked, "segment_start": 2})):
        request = GenerateRequest(
            id=entry, reply_to="api", model="m", prompt_token_ids=[1, 2], sampling={},
            pooling=pooling,
        )  # fmt: skip
        intake.accept(entry, {REQUEST_FIELD: request.encode()}, attempt=1)
    (failed,) = publisher.events
    assert isinstance(failed, Failed) and failed.ticket.request.id == "1-0"
    assert failed.error.param == "segment_start" and "older release" in failed.error.message
    assert work.qsize() == 1
