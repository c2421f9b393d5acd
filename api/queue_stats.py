"""How full a model's request stream is: for overload 503s and for /metrics.

"Undelivered" is what no worker has taken yet. Redis >= 7 reports it exactly as
the consumer group's `lag`; older servers (the embedded 6.2) do not, so there it
is the stream length minus the entries delivered but not yet acknowledged,
which is exact as long as workers delete the entries they acknowledge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from conveyor.bus import WORKER_GROUP, BusNames


@dataclass(frozen=True)
class QueueStats:
    length: int  # XLEN of the request stream
    pending: int  # delivered to a worker, not yet acknowledged (XPENDING count)
    undelivered: int  # waiting for any worker
    dead_letters: int  # XLEN of the dead-letter stream


async def queue_stats(redis: Redis, names: BusNames, model: str) -> QueueStats:
    stream = names.requests(model)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.xlen(names.dead_letters(model))
        length, groups, dead = await pipe.execute(raise_on_error=False)
    length = length if isinstance(length, int) else 0
    dead = dead if isinstance(dead, int) else 0
    group = _worker_group(groups)
    if group is None:  # no worker has ever read this stream: nothing was delivered
        return QueueStats(length, 0, length, dead)
    pending = int(group.get("pending") or 0)
    lag = group.get("lag")
    undelivered = int(lag) if lag is not None else max(0, length - pending)
    return QueueStats(length, pending, undelivered, dead)


def _worker_group(groups: Any) -> dict[str, Any] | None:
    if not isinstance(groups, list):
        return None  # the stream does not exist yet (XINFO answers with an error)
    for group in groups:
        name = group.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if name == WORKER_GROUP:
            return group
    return None
