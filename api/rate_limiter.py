"""Per-API-key requests-per-minute and tokens-per-minute limits, shared by every API replica.

The budget lives in Redis and is checked and charged by one Lua script, so N
API processes admit exactly as many requests as one would, with no
check-then-act race between them. Time is Redis server time (`TIME` inside the
script), so replicas with skewed clocks agree on what is in the window.

The window is an exact sliding window: at most `rpm` admissions, and at most
`tpm` counted tokens, in ANY `window`-second interval (an entry admitted at t
counts during [t, t + window)). Per key it keeps:

- `admitted`: ZSET request id -> admission time (microseconds);
- `tokens`:   HASH request id -> tokens counted for it (the reservation, then the
  actual usage once settled);
- `total`:    the running sum of `tokens`, so a check never sums the window:
  entries leaving the window are subtracted as they are trimmed (each entry is
  trimmed once, so the work is amortized O(1) per call).

All three expire when their newest entry leaves the window, so idle keys vanish.
A rejected request records nothing. Limits are arguments, not stored state: a
key's new limits apply from its next request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from conveyor.bus import BusNames

# ARGV: op ("admit" | "peek" | "settle"), window_us, rpm (-1: none), tpm (-1: none),
#       request_id, tokens[, most: what the request may use at most, reserved as far as
#       the budget left goes (admit only; a request that stated no max_tokens)].
# Returns (admit/peek): {allowed, too_large, count, total, reset_us, retry_us, reserved};
#         (settle): {1 if the request was still in the window else 0}.
# Scores are formatted with %.0f: Lua's default number->string ("%.14g") would
# round microsecond timestamps (16 digits).
_SCRIPT = """
local zkey, hkey, tkey = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end

-- Trim entries that left the window, subtracting their tokens from the total.
local removed = 0
local cutoff = fmt(now - window)
while true do
  local batch = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff, 'LIMIT', 0, 500)
  if #batch == 0 then break end
  local toks = redis.call('HMGET', hkey, unpack(batch))
  for i = 1, #toks do removed = removed + (tonumber(toks[i]) or 0) end
  redis.call('ZREM', zkey, unpack(batch))
  redis.call('HDEL', hkey, unpack(batch))
end
local count = redis.call('ZCARD', zkey)
local total = 0
if count == 0 then
  redis.call('DEL', hkey, tkey)
elseif removed > 0 then
  total = redis.call('DECRBY', tkey, removed)
else
  total = tonumber(redis.call('GET', tkey)) or 0
end
if total < 0 then total = 0 end

-- Time until the newest entry leaves the window: the budget is then fully restored.
local function reset()
  if count == 0 then return 0 end
  local newest = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
  return math.max(0, tonumber(newest[2]) + window - now)
end
local function touch()
  local ms = math.ceil(reset() / 1000)
  if ms > 0 then
    redis.call('PEXPIRE', zkey, ms)
    redis.call('PEXPIRE', hkey, ms)
    redis.call('PEXPIRE', tkey, ms)
  end
end

local id = ARGV[5]
local tokens = tonumber(ARGV[6])
if op == 'settle' then
  local old = redis.call('HGET', hkey, id)
  if not old then return {0} end
  redis.call('HSET', hkey, id, tokens)
  redis.call('INCRBY', tkey, tokens - tonumber(old))
  touch()
  return {1}
end

local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local too_large = tpm >= 0 and tokens > tpm
local req_ok = rpm < 0 or count < rpm
local tok_ok = tpm < 0 or total + tokens <= tpm
local allowed = req_ok and tok_ok and not too_large

local most = tonumber(ARGV[7])
if allowed and op == 'admit' then
  local old = redis.call('HGET', hkey, id)
  if most and tpm >= 0 and most > tokens then
    tokens = math.max(tokens, math.min(most, tpm - (total - (tonumber(old) or 0))))
  end
  if old then
    -- A repeated id replaces its entry instead of counting twice.
    total = total - tonumber(old)
  else
    count = count + 1
  end
  redis.call('ZADD', zkey, fmt(now), id)
  redis.call('HSET', hkey, id, tokens)
  redis.call('INCRBY', tkey, tokens - (tonumber(old) or 0))
  total = total + tokens
  touch()
end

-- When refused: time until enough of the oldest entries expire for this request to fit.
local retry = 0
if not allowed and not too_large then
  if not req_ok then
    local entry = redis.call('ZRANGE', zkey, count - rpm, count - rpm, 'WITHSCORES')
    if #entry == 0 then
      retry = window  -- rpm == 0: never; report a full window
    else
      retry = math.max(retry, tonumber(entry[2]) + window - now)
    end
  end
  if not tok_ok then
    local need = total + tokens - tpm
    local freed = 0
    local start = 0
    local found = false
    while not found do
      local batch = redis.call('ZRANGE', zkey, start, start + 99, 'WITHSCORES')
      if #batch == 0 then break end
      local ids = {}
      for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
      local toks = redis.call('HMGET', hkey, unpack(ids))
      for i = 1, #ids do
        freed = freed + (tonumber(toks[i]) or 0)
        if freed >= need then
          retry = math.max(retry, tonumber(batch[2 * i]) + window - now)
          found = true
          break
        end
      end
      start = start + 100
    end
    if not found then retry = window end
  end
  if retry < 1 then retry = 1 end
end

return {allowed and 1 or 0, too_large and 1 or 0, count, total, reset(), retry, tokens}
"""

_US = 1_000_000


@dataclass(frozen=True)
class RateLimits:
    """A key's limits, read from its record on each request; None means unlimited."""

    rpm: int | None  # requests per minute (per `window`)
    tpm: int | None  # tokens per minute (per `window`)

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None


@dataclass(frozen=True)
class RateDecision:
    """Whether a request was admitted, and the state the client sees in OpenAI's headers.

    `remaining_*` is the budget left after this request (when admitted).
    `reset_*` is the time until the budget is fully restored ("resets to its initial
    state"): until the newest counted request leaves the window; 0 when nothing is
    counted. `reset_tokens` uses the newest request even if it counted 0 tokens, so it
    is an upper bound. `retry_after` (only when refused and not `too_large`) is the
    time until enough of the oldest entries leave the window for this request to fit,
    assuming no one else is admitted meanwhile.
    """

    allowed: bool
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float | None
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float | None
    retry_after: float | None
    too_large: bool = False
    # What the admitted request holds of tpm until it is settled.
    reserved_tokens: int = 0
    # The window's tokens (settled requests may have used more than the budget).
    used_tokens: int = 0

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the limits that are set, plus `retry-after`."""
        out: dict[str, str] = {}
        for kind, limit, remaining, reset in (
            ("requests", self.limit_requests, self.remaining_requests, self.reset_requests),
            ("tokens", self.limit_tokens, self.remaining_tokens, self.reset_tokens),
        ):
            if limit is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining or 0)
            out[f"x-ratelimit-reset-{kind}"] = format_duration(reset or 0.0)
        if not self.allowed and self.retry_after is not None:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return out


UNLIMITED = RateDecision(True, None, None, None, None, None, None, None)


def format_duration(seconds: float) -> str:
    """OpenAI's (Go-style) durations: "20ms", "1s", "1.5s", "6m0s", "1h2m3s".

    Rounded up to the millisecond, so a client that waits that long finds the budget back.
    """
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class RateLimiter:
    """Admits, records and settles requests against per-key sliding windows in Redis."""

    def __init__(self, redis: Redis, names: BusNames, window: float = 60.0) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self._names = names
        self._window_us = round(window * _US)
        # register_script sends EVALSHA and falls back to loading the script on NOSCRIPT.
        self._script = redis.register_script(_SCRIPT)

    def _keys(self, key_id: str) -> list[str]:
        return [self._names.rate_limit(key_id, part) for part in ("admitted", "tokens", "total")]

    async def _run(
        self,
        op: str,
        key_id: str,
        limits: RateLimits,
        request_id: str,
        tokens: int,
        most: int | None = None,
    ) -> RateDecision:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        rpm = -1 if limits.rpm is None else limits.rpm
        tpm = -1 if limits.tpm is None else limits.tpm
        args = [op, self._window_us, rpm, tpm, request_id, tokens]
        if most is not None:
            args.append(most)
        allowed, too_large, count, total, reset_us, retry_us, reserved = await self._script(
            keys=self._keys(key_id), args=args
        )
        reset = int(reset_us) / _US
        has_requests = limits.rpm is not None
        has_tokens = limits.tpm is not None
        return RateDecision(
            allowed=bool(allowed),
            limit_requests=limits.rpm,
            remaining_requests=max(0, limits.rpm - int(count)) if has_requests else None,
            reset_requests=reset if has_requests else None,
            limit_tokens=limits.tpm,
            remaining_tokens=max(0, limits.tpm - int(total)) if has_tokens else None,
            reset_tokens=(reset if int(total) > 0 else 0.0) if has_tokens else None,
            retry_after=None if allowed or too_large else int(retry_us) / _US,
            too_large=bool(too_large),
            reserved_tokens=int(reserved) if allowed else 0,
            used_tokens=int(total),
        )

    async def admit(
        self,
        key_id: str,
        limits: RateLimits,
        *,
        request_id: str,
        tokens: int,
        most: int | None = None,
    ) -> RateDecision:
        """Atomically admit iff under `rpm` and the window's tokens + `tokens` <= `tpm`.

        On admit the request is recorded and `tokens` reserved (e.g. prompt + max_tokens);
        `settle` later replaces the reservation by the actual usage. `most`, for a request
        that stated no max_tokens, is what it may use at most (prompt + n × what the
        context leaves): it reserves that, as far as the budget left goes, so that a
        burst of such requests cannot run the key past its tpm (the first holds the
        rest), while a left-out max_tokens alone never makes a request too large.
        Unlimited keys (rpm and tpm None) never touch Redis.
        """
        if limits.unlimited:
            return UNLIMITED
        return await self._run("admit", key_id, limits, request_id, tokens, most)

    async def settle(self, key_id: str, request_id: str, tokens: int) -> None:
        """Replace the request's reservation by its actual token count, if still in the window.

        Raising it is allowed too (a reservation that underestimated): later requests wait.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        await self._script(
            keys=self._keys(key_id),
            args=["settle", self._window_us, -1, -1, request_id, tokens],
        )

    async def peek(self, key_id: str, limits: RateLimits) -> RateDecision:
        """The current state without admitting; `allowed` says whether a 0-token request fits."""
        if limits.unlimited:
            return UNLIMITED
        return await self._run("peek", key_id, limits, "", 0)
