"""The heartbeat's beat file keeps beating while Redis does not answer, so a partition
never fails every worker's probe at once (and never has them all restarted)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import redis

from conveyor.beat_file import beat_file
from conveyor.bus import BusNames
from conveyor.metrics import WorkerMetrics
from workers import heartbeat as heartbeat_module
from workers.heartbeat import BEAT_REDIS_TIMEOUT, Heartbeat, WorkerFacts, heartbeat_client


def test_the_beat_file_goes_on_while_redis_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    host, port = silent.getsockname()
    monkeypatch.setattr(heartbeat_module, "BEAT_REDIS_TIMEOUT", 0.3)
    client = heartbeat_client(f"redis://{host}:{port}/0")
    facts = WorkerFacts("m", "w-hang", 1, 16, 256, time.time())
    heartbeat = Heartbeat(
        client, BusNames("hang"), facts, WorkerMetrics("m", "w-hang"), interval=0.1, ttl=1.0
    )
    stopping = threading.Event()
    thread = threading.Thread(target=heartbeat.run, args=(stopping,), daemon=True)
    path = beat_file(facts.pid)
    seen: set[float] = set()
    thread.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(seen) < 4:
            if path.exists():
                seen.add(path.stat().st_mtime)
            time.sleep(0.05)
    finally:
        stopping.set()
        thread.join(5)
        heartbeat.clear()
        silent.close()
    assert len(seen) >= 4  # touched again and again: each beat given up, not retried
    assert not path.exists()  # a clean exit takes it away


def test_a_workers_heartbeat_uses_that_client(make_worker: Any) -> None:
    kwargs = make_worker().worker.beat_client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == BEAT_REDIS_TIMEOUT


def test_a_worker_outlives_a_failed_first_beat(
    make_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slow Redis reply right after start-up must not end a worker that has loaded
    its model: the first beat is tried again."""
    harness = make_worker(start=False)
    beat = harness.worker.heartbeat.beat
    failures = iter([redis.TimeoutError("slow"), redis.ConnectionError("reset")])

    def flaky() -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        beat()

    monkeypatch.setattr(harness.worker.heartbeat, "beat", flaky)
    harness.start()
    key = harness.names.worker(harness.worker.model, harness.worker.instance)
    deadline = time.monotonic() + 10
    while not harness.client.exists(key):
        assert time.monotonic() < deadline, "the worker never beat"
        time.sleep(0.05)


def test_the_beat_says_what_the_model_was_given_as() -> None:
    """/v1/models' `root` (vLLM's: the model argument, a folder or hub id)."""
    metrics = WorkerMetrics("m", "w")
    given = WorkerFacts("m", "w", 1, 16, 256, time.time(), root="org/model")
    assert (
        Heartbeat(None, BusNames("t"), given, metrics, interval=1, ttl=3).payload()["root"]
        == "org/model"
    )  # type: ignore[arg-type]
    unsaid = WorkerFacts("m", "w", 1, 16, 256, time.time())
    assert (
        Heartbeat(None, BusNames("t"), unsaid, metrics, interval=1, ttl=3).payload()["root"] == "m"
    )  # type: ignore[arg-type]
