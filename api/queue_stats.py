"""How full a model's request streams are: for overload 503s and for /metrics.

Each lane (interactive, batch) is its own stream: the overload check looks at
the request's lane only, so a full batch lane never refuses interactive work;
/metrics reports each lane apart (`lane_stats`).

"Undelivered" is what no worker has taken yet: the stream length minus the
entries delivered but not yet acknowledged, exact because every acknowledged
entry is deleted with it and a cancelled one is deleted outright. Redis 7's
consumer-group `lag` is not used: a request cancelled before any worker took it
(an XDEL ahead of the group) leaves it nil, and once the group reads past the
gap 7.0-7.2 count the deleted entry as undelivered for ever (redis/redis#13337),
which would hold a lane "full" after enough cancels.

"Orphaned" is what a worker took and then died (or hung) with: still pending under
its name until a janitor reclaims it, but waiting as much as an undelivered request,
which is how /metrics counts it (`vllm:num_requests_waiting`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from conveyor.bus import LANES, WORKER_GROUP, BusNames


@dataclass(frozen=True)
class QueueStats:
    length: int  # XLEN of the request stream(s)
    pending: int  # delivered to a worker, not yet acknowledged (XPENDING count)
    undelivered: int  # waiting for any worker
    dead_letters: int  # XLEN of the model's dead-letter stream (shared by the lanes)
    # Of `pending`, held by workers without a heartbeat (dead or hung): waiting again,
    # for a janitor to hand them on. Counted only when the caller says who is alive.
    orphaned: int = 0

    @property
    def waiting(self) -> int:
        """Requests no live worker is serving: what vLLM calls waiting."""
        return self.undelivered + self.orphaned


async def queue_stats(
    redis: Redis, names: BusNames, model: str, lanes: Iterable[str] = LANES
) -> QueueStats:
    """The model's queue over `lanes` (all by default), in one round trip."""
    per_lane = await lane_stats(redis, names, model, lanes)
    stats = list(per_lane.values())
    return QueueStats(
        length=sum(s.length for s in stats),
        pending=sum(s.pending for s in stats),
        undelivered=sum(s.undelivered for s in stats),
        dead_letters=stats[0].dead_letters if stats else 0,
        orphaned=sum(s.orphaned for s in stats),
    )


async def lane_stats(
    redis: Redis,
    names: BusNames,
    model: str,
    lanes: Iterable[str] = LANES,
    live_workers: Collection[str] | None = None,
) -> dict[str, QueueStats]:
    """Each lane's stream on its own (`dead_letters` is the model's, repeated per lane);
    with `live_workers` (the ids of the model's workers with a heartbeat) it also counts
    what the others hold (`orphaned`)."""
    streams = {lane: names.requests(model, lane) for lane in lanes}
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams.values():
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            if live_workers is not None:
                pipe.xinfo_consumers(stream, WORKER_GROUP)
        pipe.xlen(names.dead_letters(model))
        replies = await pipe.execute(raise_on_error=False)
    dead = replies[-1] if isinstance(replies[-1], int) else 0
    step = 2 if live_workers is None else 3
    out = {}
    for i, lane in enumerate(streams):
        length, groups = replies[step * i], replies[step * i + 1]
        orphaned = 0
        if live_workers is not None:
            orphaned = _held_by_others(replies[step * i + 2], live_workers)
        out[lane] = _stream_stats(length, groups, dead, orphaned)
    return out


def _stream_stats(length: Any, groups: Any, dead: int, orphaned: int) -> QueueStats:
    length = length if isinstance(length, int) else 0
    group = _worker_group(groups)
    if group is None:  # no worker has ever read this stream: nothing was delivered
        return QueueStats(length, 0, length, dead)
    pending = int(group.get("pending") or 0)
    return QueueStats(length, pending, max(0, length - pending), dead, min(orphaned, pending))


def _held_by_others(consumers: Any, live_workers: Collection[str]) -> int:
    """Pending entries of the group's consumers that are not live workers."""
    if not isinstance(consumers, list):
        return 0  # no stream or no group yet (XINFO answers with an error)
    held = 0
    for consumer in consumers:
        name = consumer.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if name not in live_workers:
            held += int(consumer.get("pending") or 0)
    return held


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
