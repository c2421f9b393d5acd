"""What the refusal memo remembers, for how long, and for which limits."""

from __future__ import annotations

import time

import pytest

from api.rate_limiter import RateDecision, RateLimits
from api.refusal_memo import RefusalMemo

LIMITS = RateLimits(rpm=2, tpm=1000)


def refused(
    *,
    retry_after: float,
    remaining_requests: int = 0,
    remaining_tokens: int = 900,
    too_large: bool = False,
) -> RateDecision:
    return RateDecision(
        allowed=False,
        limit_requests=2,
        remaining_requests=remaining_requests,
        reset_requests=30.0,
        limit_tokens=1000,
        remaining_tokens=remaining_tokens,
        reset_tokens=30.0,
        retry_after=None if too_large else retry_after,
        too_large=too_large,
    )


def test_an_rpm_refusal_is_remembered_until_its_retry_time() -> None:
    memo = RefusalMemo()
    memo.remember("k", LIMITS, refused(retry_after=0.3), tokens=50)
    first = memo.refusal("k", LIMITS)
    assert first is not None and not first.allowed
    assert 0 < (first.retry_after or 0) <= 0.3
    assert first.headers()["retry-after"] == "1"
    assert memo.refusal("other", LIMITS) is None
    time.sleep(0.35)
    assert memo.refusal("k", LIMITS) is None


def test_new_limits_forget_the_refusal() -> None:
    memo = RefusalMemo()
    memo.remember("k", LIMITS, refused(retry_after=30), tokens=50)
    assert memo.refusal("k", RateLimits(rpm=10, tpm=1000)) is None
    assert memo.refusal("k", LIMITS) is None  # dropped, not kept for the old limits


@pytest.mark.parametrize(
    ("decision", "tokens", "why"),
    [
        (refused(retry_after=5, remaining_requests=1), 50, "refused for tokens, not requests"),
        (refused(retry_after=5, remaining_tokens=10), 50, "tokens overflowed too: wait is theirs"),
        (refused(retry_after=5, too_large=True), 5000, "too large is about this request only"),
    ],
)
def test_only_refusals_for_requests_alone_are_remembered(
    decision: RateDecision, tokens: int, why: str
) -> None:
    memo = RefusalMemo()
    memo.remember("k", LIMITS, decision, tokens=tokens)
    assert memo.refusal("k", LIMITS) is None, why


def test_allowed_decisions_are_not_remembered() -> None:
    memo = RefusalMemo()
    ok = RateDecision(True, 2, 1, 30.0, None, None, None, None)
    memo.remember("k", RateLimits(rpm=2, tpm=None), ok, tokens=1)
    assert memo.refusal("k", RateLimits(rpm=2, tpm=None)) is None


def test_every_wait_a_remembered_refusal_names_counts_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA: replays kept reset-tokens frozen and turned reset-requests (a full reset) into
    the retry time. Each header keeps its meaning, each as much shorter as time passed."""
    clock = {"now": 100.0}
    monkeypatch.setattr("api.refusal_memo.time.monotonic", lambda: clock["now"])
    memo = RefusalMemo()
    decision = refused(retry_after=20.0)  # both budgets reset fully in 30 s
    memo.remember("k", LIMITS, decision, tokens=50)
    clock["now"] += 4.0
    later = memo.refusal("k", LIMITS)
    assert later is not None
    assert (later.retry_after, later.reset_requests, later.reset_tokens) == (16.0, 26.0, 26.0)
    assert later.headers()["x-ratelimit-reset-tokens"] == "26s"
    assert later.remaining_tokens == decision.remaining_tokens
    clock["now"] += 16.0
    assert memo.refusal("k", LIMITS) is None  # the retry time has come
