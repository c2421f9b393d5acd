"""A streamed background response's events, kept in Redis so any replica can replay them.

`background: true, stream: true` runs the response as a task of the API process
that took it (api/background_responses.py); the task appends every event to a
Redis stream (BusNames.response_events) and an end mark after the last one.
The create call and `GET /v1/responses/{id}?stream=true&starting_after=N`, on
any replica, read that log from the start (or past event N) and end at the
mark, so a client whose connection dropped picks up where it left off, as
OpenAI's resumable background streams do. The log outlives the run by the
polling window, then expires.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from conveyor.bus import BusNames

EVENT_FIELD = "event"
END_FIELD = "end"
# How long one blocking read waits before the reader looks at its deadline again.
READ_BLOCK_MS = 1000


class LogAbandoned(Exception):
    """The deadline passed with no end mark: the process running the response died."""


class ResponseEventLog:
    """Append and replay; the Redis client must decode responses (the app's does)."""

    def __init__(self, redis: Redis, names: BusNames, ttl: float) -> None:
        self.redis = redis
        self.names = names
        self.ttl = max(1, int(ttl))

    async def append(self, response_id: str, event: dict[str, Any]) -> None:
        await self._add(response_id, {EVENT_FIELD: json.dumps(event)})

    async def end(self, response_id: str) -> None:
        """Mark the log complete: readers stop here (after a final event, a cancel, or a
        failure that could write none)."""
        await self._add(response_id, {END_FIELD: "1"})

    async def _add(self, response_id: str, fields: dict[str, str]) -> None:
        key = self.names.response_events(response_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields)  # type: ignore[arg-type]
            pipe.expire(key, self.ttl)
            await pipe.execute()

    async def exists(self, response_id: str) -> bool:
        return bool(await self.redis.exists(self.names.response_events(response_id)))

    async def read(
        self, response_id: str, starting_after: int | None, deadline: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events with a sequence number past `starting_after` (all if None), as they
        are appended, until the end mark, or until `deadline` (a wall-clock time past
        which no run can still be writing: then LogAbandoned)."""
        key = self.names.response_events(response_id)
        last_id = "0-0"
        while True:
            batches = await self.redis.xread({key: last_id}, block=READ_BLOCK_MS)
            if not batches and time.time() >= deadline:
                break  # a finished log replays whatever its age; only a stalled one ends here
            for _, entries in batches or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    if END_FIELD in fields:
                        return
                    event = json.loads(fields[EVENT_FIELD])
                    if starting_after is None or event.get("sequence_number", -1) > starting_after:
                        yield event
        raise LogAbandoned(response_id)
