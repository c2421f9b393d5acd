"""A request joins its lane's stream only while fewer than --max-queued-requests wait
there: the count and the XADD in one Lua script, so a burst cannot slip past the limit.

Why not the overload check alone: it reads the queue when a request arrives, and the
request is queued only after tokenizing; a burst of 60 at once all saw an empty queue
and all got in (then timed out waiting, where a fast 503 was due). The early check
still refuses cheaply before any tokenizing; this one decides.

"Waiting" is the worker group's `lag` where Redis reports it (>= 7), else the stream
length minus what was delivered and not yet acknowledged (api/queue_stats.py says why
that is exact).
"""

from __future__ import annotations

from redis.asyncio import Redis

from api.errors import ApiError
from conveyor.bus import INTERACTIVE_LANE, WORKER_GROUP

# KEYS[1] the lane's stream; ARGV: the worker group, the most that may wait, the field
# and the request. Returns {1, entry id} when queued, {0, how many wait} when refused.
_ADMIT = """
local waiting = redis.call('XLEN', KEYS[1])
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, group in ipairs(groups) do
    local fields = {}
    for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
    if fields['name'] == ARGV[1] then
      if type(fields['lag']) == 'number' then
        waiting = fields['lag']
      else
        waiting = waiting - (tonumber(fields['pending']) or 0)
      end
    end
  end
end
if waiting >= tonumber(ARGV[2]) then
  return {0, waiting}
end
return {1, redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4])}
"""


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
    """Queues a request unless its lane is full (one script, registered once)."""

    def __init__(self, redis: Redis, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        # redis-py loads the script again by itself after a Redis restart (NOSCRIPT).
        self._script = redis.register_script(_ADMIT)

    async def queue(
        self, stream: str, field: str, payload: str | bytes, *, model: str, lane: str
    ) -> str:
        """The entry id; a 503 `overloaded` when --max-queued-requests already wait."""
        queued, value = await self._script(
            keys=[stream], args=[WORKER_GROUP, self.max_waiting, field, payload]
        )
        if not int(queued):
            raise overloaded(model, lane, int(value))
        return value.decode() if isinstance(value, bytes) else str(value)
