"""Keys out of requests for a known while: refused before their prompt is tokenized.

Once Redis says a key's rpm window is full, no request from it can be
admitted, on any replica, until the window's oldest entry ages out: that time
is the refusal's `retry_after` and does not depend on the next request. So
this process remembers it and answers the key's next requests with the same
429 at once, without tokenizing or asking Redis; a tenant hammering a full
key costs the API almost nothing. Token (tpm) refusals are not remembered:
whether the next request fits depends on its size. An entry counts only
for the limits it was computed with, so raising a key's rpm takes effect as
soon as the key cache sees it. Redis reports waits under a second as one
second, so a remembered refusal can outlast the real one by under a second:
it refuses a little more, never admits more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from api.rate_limiter import RateDecision, RateLimits

# Past this many remembered keys, expired entries are dropped on the next insert.
_PRUNE_AT = 10_000


@dataclass(frozen=True)
class _Refusal:
    at: float  # time.monotonic() when Redis decided it
    limits: RateLimits
    decision: RateDecision

    @property
    def until(self) -> float:
        return self.at + (self.decision.retry_after or 0.0)


class RefusalMemo:
    def __init__(self) -> None:
        self._refusals: dict[str, _Refusal] = {}

    def remember(
        self, key_id: str, limits: RateLimits, decision: RateDecision, tokens: int
    ) -> None:
        """Keep a refusal due to rpm alone until its retry time; anything else is ignored.

        When the request's `tokens` would also have overflowed tpm, the retry time
        is the later of the two waits, which a smaller request need not wait: skip.
        """
        if decision.allowed or decision.too_large or decision.retry_after is None:
            return
        if limits.rpm is None or decision.remaining_requests != 0:
            return
        if limits.tpm is not None and tokens > (decision.remaining_tokens or 0):
            return
        now = time.monotonic()
        if len(self._refusals) >= _PRUNE_AT:
            self._refusals = {k: r for k, r in self._refusals.items() if r.until > now}
        self._refusals[key_id] = _Refusal(now, limits, decision)

    def refusal(self, key_id: str, limits: RateLimits) -> RateDecision | None:
        """The remembered refusal with its times brought up to now, or None."""
        entry = self._refusals.get(key_id)
        if entry is None:
            return None
        now = time.monotonic()
        if entry.until <= now or entry.limits != limits:
            del self._refusals[key_id]
            return None
        return _aged(entry.decision, now - entry.at)


def _aged(decision: RateDecision, elapsed: float) -> RateDecision:
    """`decision` `elapsed` seconds later: every wait it names is that much shorter (each
    header keeps its meaning: the retry, and each budget's full reset)."""

    def less(seconds: float | None) -> float | None:
        return None if seconds is None else max(0.0, seconds - elapsed)

    return replace(
        decision,
        retry_after=less(decision.retry_after),
        reset_requests=less(decision.reset_requests),
        reset_tokens=less(decision.reset_tokens),
    )
