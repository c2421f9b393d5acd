"""Two lanes per model: batch lines never delay interactive requests, and nothing overflows."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from conveyor.bus import BATCH_LANE, INTERACTIVE_LANE, LANES, WORKER_GROUP, BusNames
from conveyor.protocol import GenerateRequest
from conveyor.settings import Settings
from engine.llm_engine import LLMEngine
from workers.announce import ensure_group
from workers.engine_worker import worker_engine_config
from workers.inflight import Inflight
from workers.intake import (
    BATCH_PRIORITY_FLOOR,
    BATCH_PRIORITY_OFFSET,
    PRIORITY_LIMIT,
    REQUEST_FIELD,
    Intake,
    engine_priority,
)

from .conftest import Harness, wait_for

PROMPT = "The capital of France is"


def send(h: Harness, request: GenerateRequest, lane: str) -> str:
    h.client.xadd(h.names.requests(h.model, lane), {REQUEST_FIELD: request.encode()})
    return request.id


def create_groups(h: Harness) -> None:
    """What the worker's announce does; needed before XADDs that precede its start."""
    for lane in LANES:
        ensure_group(h.client, h.names.requests(h.model, lane))


def pending_of(h: Harness, consumer: str) -> int:
    return sum(
        len(
            h.client.xpending_range(
                h.names.requests(h.model, lane), WORKER_GROUP, "-", "+", 100, consumername=consumer
            )
        )
        for lane in LANES
    )


def spy_admissions(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(request id, engine priority) in the order the worker handed requests to the engine."""
    admitted: list[tuple[str, int]] = []
    real_add = engine.add_request

    def spy(request_id: str, *args: Any, **kwargs: Any) -> None:
        admitted.append((request_id, kwargs["priority"]))
        real_add(request_id, *args, **kwargs)

    monkeypatch.setattr(engine, "add_request", spy)
    return admitted


def test_names_and_wire_format() -> None:
    names = BusNames("p")
    assert LANES == (INTERACTIVE_LANE, BATCH_LANE)
    assert names.requests("m") == names.requests("m", INTERACTIVE_LANE) == "p:req:m"
    # The interactive name as a Cluster hash tag: both lanes hash to the same slot.
    assert names.requests("m", BATCH_LANE) == "{p:req:m}:batch"
    with pytest.raises(ValueError, match="lane"):
        names.requests("m", "bulk")
    request = GenerateRequest("r", "api", "m", [1], {}, lane=BATCH_LANE)
    assert GenerateRequest.decode(request.encode()).lane == BATCH_LANE
    old = json.loads(request.encode())
    del old["lane"]  # a peer of an older release
    assert GenerateRequest.decode(json.dumps(old)).lane == INTERACTIVE_LANE


def test_engine_priority_puts_every_batch_request_behind_every_interactive_one() -> None:
    assert engine_priority(5, INTERACTIVE_LANE) == 5
    assert engine_priority(-7, INTERACTIVE_LANE) == -7
    assert engine_priority(10**12, INTERACTIVE_LANE) == PRIORITY_LIMIT
    assert engine_priority(-(10**12), INTERACTIVE_LANE) == -PRIORITY_LIMIT
    assert engine_priority(0, BATCH_LANE) == BATCH_PRIORITY_OFFSET
    worst_interactive = engine_priority(10**12, INTERACTIVE_LANE)
    best_batch = engine_priority(-(10**12), BATCH_LANE)
    assert worst_interactive < best_batch
    assert worst_interactive < BATCH_PRIORITY_FLOOR == best_batch


def test_worker_engine_treats_exactly_the_batch_lane_as_background() -> None:
    config = worker_engine_config(Settings(batch_prefill_tokens=96))
    assert config.background_priority == BATCH_PRIORITY_FLOOR
    assert config.background_prefill_tokens == 96


class _ArrivalsBeforeTheBlockingRead:
    """A client on which entries land on both lanes just before intake's blocking read.

    That is the race the blocking read must survive: both lanes were empty a moment
    ago, so it waits on both, and Redis answers at once from both streams.
    """

    def __init__(self, client: redis.Redis, arrivals: dict[str, int]) -> None:
        self.client = client
        self.arrivals = arrivals
        self.blocking_reads: list[list[str]] = []

    def xreadgroup(self, *args: Any, block: int | None = None, **kwargs: Any) -> Any:
        if block is not None:
            self.blocking_reads.append(list(args[2]))
            for stream, n in self.arrivals.items():
                for i in range(n):
                    self.client.xadd(stream, {REQUEST_FIELD: f"{stream}-{i}"})
            self.arrivals = {}
        return self.client.xreadgroup(*args, block=block, **kwargs)


def _intake(client: Any, names: BusNames, capacity: int = 4) -> Intake:
    work: queue.Queue[Any] = queue.Queue()
    return Intake(
        client,
        names,
        "m",
        "w1",
        Inflight(capacity),
        None,
        work,
        lambda: None,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("slots", "each", "want"),
    [
        (1, 3, [INTERACTIVE_LANE]),  # one slot: only the interactive lane is watched
        (2, 3, [INTERACTIVE_LANE, BATCH_LANE]),
        (3, 3, [INTERACTIVE_LANE, BATCH_LANE]),  # COUNT 1 per stream: 2 <= 3
        (4, 3, [INTERACTIVE_LANE, INTERACTIVE_LANE, BATCH_LANE, BATCH_LANE]),
    ],
)
def test_intake_reads_interactive_first_and_never_more_than_its_free_slots(
    client: redis.Redis, slots: int, each: int, want: list[str]
) -> None:
    names = BusNames(f"t{uuid.uuid4().hex[:10]}")
    streams = {lane: names.requests("m", lane) for lane in LANES}
    for stream in streams.values():
        ensure_group(client, stream)

    # Both lanes queued: the non-blocking reads, interactive first, batch with what is left.
    for i in range(2):
        client.xadd(streams[BATCH_LANE], {REQUEST_FIELD: f"b{i}"})
    client.xadd(streams[INTERACTIVE_LANE], {REQUEST_FIELD: "i0"})
    intake = _intake(client, names)
    got = intake.read(2)
    assert [(lane, fields[REQUEST_FIELD]) for lane, _, fields in got] == [
        (INTERACTIVE_LANE, "i0"),
        (BATCH_LANE, "b0"),
    ]
    assert [(lane, f[REQUEST_FIELD]) for lane, _, f in intake.read(5)] == [(BATCH_LANE, "b1")]

    # Both lanes empty, then entries on both just before the blocking read.
    racing = _ArrivalsBeforeTheBlockingRead(client, {s: each for s in streams.values()})
    intake = _intake(racing, names)
    got = intake.read(slots)
    assert racing.blocking_reads, "both lanes were empty: intake should have blocked"
    assert [lane for lane, _, _ in got] == want
    assert len(got) <= slots
    delivered = sum(
        int(client.xpending(stream, WORKER_GROUP)["pending"]) for stream in streams.values()
    )
    assert delivered == 3 + len(got)  # nothing was delivered that intake did not return


def test_interactive_request_overtakes_queued_batch_lines(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admitted = spy_admissions(engine, monkeypatch)
    gate = threading.Event()  # holds the engine, so the two slots stay full meanwhile
    real_step = engine.step

    def gated() -> Any:
        gate.wait(20)
        return real_step()

    monkeypatch.setattr(engine, "step", gated)
    h: Harness = make_worker(start=False)
    create_groups(h)
    prompt = engine.tokenizer.encode(PROMPT)
    batch = [send(h, h.request(prompt, max_tokens=3), BATCH_LANE) for _ in range(5)]
    h.start()
    wait_for(lambda: len(admitted) == 2)  # capacity 2: two batch lines hold both slots
    interactive = send(h, h.request(prompt, max_tokens=3), INTERACTIVE_LANE)
    time.sleep(0.2)  # intake would have taken it by now if a slot were free
    assert len(admitted) == 2
    gate.set()
    replies = h.collect([*batch, interactive], timeout=60)
    order = [rid for rid, _ in admitted]
    assert order == [*batch[:2], interactive, *batch[2:]]
    priorities = dict(admitted)
    assert priorities[interactive] == 0
    assert all(priorities[b] == BATCH_PRIORITY_OFFSET for b in batch)
    assert all(m[-1].usage is not None for m in replies.values())
    assert h.pending() == 0 and pending_of(h, h.worker.instance) == 0


def test_both_lanes_busy_never_exceed_the_free_slots(
    engine: LLMEngine, make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admitted = spy_admissions(engine, monkeypatch)
    h: Harness = make_worker(start=False)
    create_groups(h)
    prompt = engine.tokenizer.encode(PROMPT)
    batch = [send(h, h.request(prompt, max_tokens=3), BATCH_LANE) for _ in range(4)]
    interactive = [send(h, h.request(prompt, max_tokens=3), INTERACTIVE_LANE) for _ in range(4)]
    h.start()
    most = 0
    deadline = time.monotonic() + 60
    while not all(h.finished(i) for i in batch + interactive):
        assert time.monotonic() < deadline
        most = max(most, pending_of(h, h.worker.instance))
        h.poll(0.01)
    assert most == 2  # never more than max_num_seqs over both lanes, and it did fill up
    assert [rid for rid, _ in admitted] == interactive + batch
    assert pending_of(h, h.worker.instance) == 0
    assert all(h.client.xlen(h.names.requests(h.model, lane)) == 0 for lane in LANES)


@pytest.mark.parametrize("max_deliveries", [3, 1])
def test_janitor_reclaims_from_the_batch_lane(
    engine: LLMEngine, make_worker: Any, client: redis.Redis, max_deliveries: int
) -> None:
    """A dead worker's batch line reruns (in the batch lane), or is dead-lettered as batch."""
    h: Harness = make_worker(start=False, max_deliveries=max_deliveries)
    create_groups(h)
    stream = h.names.requests(h.model, BATCH_LANE)
    request = h.request(engine.tokenizer.encode(PROMPT))
    send(h, request, BATCH_LANE)
    assert client.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=1)
    h.start()
    msgs = h.collect([request.id])[request.id]
    assert all(m.attempt == 2 for m in msgs)
    if max_deliveries == 1:
        assert msgs[-1].error is not None and msgs[-1].error.status == 500
        (entry,) = client.xrange(h.names.dead_letters(h.model))
        assert entry[1]["lane"] == BATCH_LANE and entry[1][REQUEST_FIELD] == request.encode()
    else:
        assert msgs[-1].usage is not None and msgs[-1].error is None
    wait_for(lambda: int(client.xpending(stream, WORKER_GROUP)["pending"]) == 0)
    assert client.xlen(stream) == 0
    consumers = lambda: {c["name"] for c in client.xinfo_consumers(stream, WORKER_GROUP)}  # noqa: E731
    wait_for(lambda: "dead" not in consumers())


def test_undecodable_batch_entry_is_dead_lettered_from_its_own_stream(
    make_worker: Any, client: redis.Redis
) -> None:
    h: Harness = make_worker()
    stream = h.names.requests(h.model, BATCH_LANE)
    client.xadd(stream, {REQUEST_FIELD: "not json"})
    wait_for(lambda: client.xlen(h.names.dead_letters(h.model)) == 1)
    (entry,) = client.xrange(h.names.dead_letters(h.model))
    assert entry[1]["lane"] == BATCH_LANE and "undecodable" in entry[1]["reason"]
    wait_for(lambda: client.xlen(stream) == 0)
    assert int(client.xpending(stream, WORKER_GROUP)["pending"]) == 0


def test_a_group_made_again_serves_what_was_queued_before_it(client: redis.Redis) -> None:
    """After a Redis restart an API may queue before any worker makes the group again;
    those entries are unserved, so the new group must deliver them."""
    names = BusNames(f"t{uuid.uuid4().hex[:10]}")
    stream = names.requests("m", INTERACTIVE_LANE)
    client.xadd(stream, {REQUEST_FIELD: "early"})  # XADD makes the stream, not the group
    ensure_group(client, stream)
    ensure_group(client, stream)  # a second worker: no error, no second group
    got = _intake(client, names).read(5)
    assert [f[REQUEST_FIELD] for _, _, f in got] == ["early"]
