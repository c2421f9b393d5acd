"""Request logs leave the hot path here: appended in memory, written in batches.

A request only appends a dict; a background task writes everything gathered
every `flush_interval` seconds in one transaction (in a thread, so a slow
database never blocks the event loop, let alone a request). A crash loses at
most the last `flush_interval` of logs; a clean stop (SIGTERM) flushes all.
While the database is down, rows are kept up to `max_rows`, oldest dropped
first (and counted), so memory stays bounded. Uses of keys by requests
that leave no log row (files, batches) are gathered too, a time per key, so
the same write stamps every key's `last_used_at`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread

logger = logging.getLogger(__name__)

# (rows, {key id: when it was last used by a request without a row}).
Writer = Callable[[Sequence[Mapping[str, Any]], Mapping[str, int]], None]


class RequestLogBuffer:
    def __init__(self, write: Writer, *, flush_interval: float, max_rows: int) -> None:
        self._write = write
        self.flush_interval = flush_interval
        self.max_rows = max_rows
        self._rows: deque[Mapping[str, Any]] = deque()
        self._used: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.dropped = 0
        self.written = 0

    def add(self, row: Mapping[str, Any]) -> None:
        self._rows.append(row)
        while len(self._rows) > self.max_rows:
            self._rows.popleft()
            self.dropped += 1

    def touch(self, key_id: str, at: int) -> None:
        """`key_id` was used at `at` by a request that logs no row."""
        self._used[key_id] = max(at, self._used.get(key_id, at))

    def __len__(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="request-log-flusher")

    async def stop(self) -> None:
        """Stop the timer and write whatever is left (the SIGTERM path)."""
        if self._task is not None:
            # Cancel only between flushes: a flush cancelled mid-write has taken its rows
            # out of the buffer and would drop them (unwritten if that write then fails).
            async with self._lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        if self._rows:
            logger.error("request logs: %d rows could not be written at shutdown", len(self._rows))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._rows and not self._used:
                return
            rows, used = list(self._rows), self._used
            self._rows.clear()
            self._used = {}
            try:
                await anyio.to_thread.run_sync(self._write, rows, used)
            except Exception:
                logger.exception(
                    "request logs: writing %d rows (%d keys' uses) failed; will retry",
                    len(rows),
                    len(used),
                )
                for key_id, at in used.items():
                    self.touch(key_id, at)
                # Put them back in front of anything that arrived meanwhile, still bounded.
                self._rows.extendleft(reversed(rows))
                while len(self._rows) > self.max_rows:
                    self._rows.popleft()
                    self.dropped += 1
                return
            self.written += len(rows)
