"""A worker's periodic log line: throughput, queue and KV cache, in vLLM's words.

Operators watching `vllm serve` read "Avg prompt throughput ... Running: 3 reqs
... KV cache usage" every few seconds; this writes the same line per worker
while it has work, and once more when the work stops (so the last line shows
it idle). `--disable-log-stats` turns it off. It runs on the engine thread,
from stats the loop already sampled, so it never touches the engine itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.llm_engine import EngineStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Totals:
    """Cumulative counts at one point in time."""

    at: float
    prompt_tokens: float
    generation_tokens: float
    prefix_queries: int
    prefix_hits: int


class StatsLogger:
    def __init__(
        self,
        worker: str,
        token_counts: Callable[[], tuple[float, float]],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self.token_counts = token_counts  # (prompt, generation) tokens so far
        self.interval = interval
        self.clock = clock
        self._last: _Totals | None = None
        self._was_busy = False

    def due(self) -> bool:
        return self._last is None or self.clock() - self._last.at >= self.interval

    def observe(self, stats: EngineStats) -> str | None:
        """Log (and return) a line if the interval is up and there was work; else None."""
        if not self.due():
            return None
        prompt, generation = self.token_counts()
        now = _Totals(
            self.clock(),
            prompt,
            generation,
            stats.prefix_cache_queries,
            stats.prefix_cache_hits,
        )
        last, self._last = self._last, now
        if last is None:
            return None
        seconds = max(now.at - last.at, 1e-9)
        prompt_rate = (now.prompt_tokens - last.prompt_tokens) / seconds
        generation_rate = (now.generation_tokens - last.generation_tokens) / seconds
        queries = now.prefix_queries - last.prefix_queries
        hits = now.prefix_hits - last.prefix_hits
        busy = bool(prompt_rate or generation_rate or stats.num_running or stats.num_waiting)
        if not busy and not self._was_busy:
            return None
        self._was_busy = busy
        line = (
            f"worker {self.worker}: Avg prompt throughput: {prompt_rate:.1f} tokens/s, "
            f"Avg generation throughput: {generation_rate:.1f} tokens/s, "
            f"Running: {stats.num_running} reqs, Waiting: {stats.num_waiting} reqs, "
            f"KV cache usage: {100 * stats.kv_cache_usage:.1f}%, "
            f"Prefix cache hit rate: {100 * hits / queries if queries else 0.0:.1f}%"
        )
        logger.info("%s", line)
        return line
