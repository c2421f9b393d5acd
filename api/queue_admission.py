"""A request joins its lane's stream only while fewer than --max-queued-requests wait
there: the count and the XADD in one Lua script, so a burst cannot slip past the limit.

Why not the overload check alone: it reads the queue when a request arrives, and the
request is queued only after tokenizing; a burst of 60 at once all saw an empty queue
and all got in (then timed out waiting, where a fast 503 was due). The early check
still refuses cheaply before any tokenizing; this one decides.

All of one request's entries go in one call, so a request is never half queued, and a
lane with room admits a request whole (see is_full).

"Waiting" is the stream length minus what was delivered and not yet acknowledged
(api/queue_stats.py says why that is exact, and why not Redis 7's `lag`).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from api.errors import ApiError
from conveyor.bus import INTERACTIVE_LANE, WORKER_GROUP

# KEYS[1] the lane's stream; ARGV: the worker group, the most that may wait, the field,
# then the request's entries. Returns {1, {entry ids}} when queued, {0, how many wait}
# when refused. The rule is is_full's, below.
_ADMIT = """
local waiting = redis.call('XLEN', KEYS[1])
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, group in ipairs(groups) do
    local fields = {}
    for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
    if fields['name'] == ARGV[1] then
      waiting = waiting - (tonumber(fields['pending']) or 0)
    end
  end
end
local adding = #ARGV - 3
if waiting > 0 and waiting + adding > tonumber(ARGV[2]) then
  return {0, waiting}
end
local ids = {}
for i = 4, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[i])
end
return {1, ids}
"""


def is_full(waiting: int, adding: int, max_waiting: int) -> bool:
    """Whether a lane where `waiting` requests wait refuses `adding` more. All of one
    request's entries (its prompts, choices, inputs) are admitted together, and an empty
    lane admits any request: one larger than the limit waits alone rather than being
    refused for ever (Retry-After would only bring it back)."""
    return waiting > 0 and waiting + adding > max_waiting


def overloaded(model: str, lane: str, waiting: int) -> ApiError:
    """The 503 a client retries after a second."""
    which = "" if lane == INTERACTIVE_LANE else f"{lane} "
    return ApiError(
        503,
        f"The model `{model}` is overloaded ({waiting} {which}requests waiting); retry later",
        code="overloaded",
        headers={"Retry-After": "1"},
    )


class QueueAdmission:
    """Queues a request's entries unless its lane is full (one script, registered once)."""

    def __init__(self, redis: Redis, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        # redis-py loads the script again by itself after a Redis restart (NOSCRIPT).
        self._script = redis.register_script(_ADMIT)

    async def queue(
        self,
        stream: str,
        field: str,
        payloads: Sequence[str | bytes],
        *,
        model: str,
        lane: str,
    ) -> list[str]:
        """Their entry ids, all or none; a 503 `overloaded` when the lane is full."""
        queued, value = await self._script(
            keys=[stream], args=[WORKER_GROUP, self.max_waiting, field, *payloads]
        )
        if not int(queued):
            raise overloaded(model, lane, int(value))
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
