"""The worker's periodic stats line: rates over the interval, only while there is work."""

from __future__ import annotations

import logging

import pytest

from engine.llm_engine import EngineStats
from workers.stats_logger import StatsLogger


def _stats(running: int = 0, waiting: int = 0, queries: int = 0, hits: int = 0) -> EngineStats:
    return EngineStats(
        num_running=running,
        num_waiting=waiting,
        kv_cache_usage=0.25,
        num_kv_blocks=100,
        num_preemptions=0,
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_per_interval_while_busy_then_one_idle_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="workers.stats_logger")
    clock = _Clock()
    tokens = [0.0, 0.0]
    log = StatsLogger("w1", lambda: (tokens[0], tokens[1]), interval=10.0, clock=clock)
    assert log.observe(_stats()) is None  # the first look only starts the count
    clock.now += 5.0
    assert not log.due()
    assert log.observe(_stats(running=2)) is None
    clock.now += 5.0
    tokens[:] = [300.0, 50.0]
    line = log.observe(_stats(running=2, waiting=1, queries=200, hits=50))
    assert line == (
        "worker w1: Avg prompt throughput: 30.0 tokens/s, Avg generation throughput: 5.0 "
        "tokens/s, Running: 2 reqs, Waiting: 1 reqs, KV cache usage: 25.0%, "
        "Prefix cache hit rate: 25.0%"
    )
    assert line in caplog.text
    clock.now += 10.0
    idle = log.observe(_stats(queries=200, hits=50))  # work ended: said once
    assert idle is not None and "Avg generation throughput: 0.0 tokens/s" in idle
    assert "Prefix cache hit rate: 0.0%" in idle
    for _ in range(3):  # then silence while idle
        clock.now += 10.0
        assert log.observe(_stats(queries=200, hits=50)) is None
    clock.now += 10.0
    tokens[1] += 20.0
    assert log.observe(_stats()) is not None  # work again
