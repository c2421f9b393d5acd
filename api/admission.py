"""Admit a request against its key's rpm/tpm budget, or refuse it with OpenAI's 429.

OpenAI's 429 bodies say which budget ran out in `type` ("requests" or "tokens",
`code` rate_limit_exceeded), and clients branch on it."""

from __future__ import annotations

import asyncio
import logging
import math

from fastapi import Request

from api.errors import ApiError
from api.rate_limiter import RateDecision, RateLimiter, RateLimits
from api.refusal_memo import RefusalMemo
from api.request_record import RequestRecord

logger = logging.getLogger(__name__)

# Releases still running for callers that went away (a strong reference keeps them alive).
_releasing: set[asyncio.Task[None]] = set()


def refuse_early(request: Request, record: RequestRecord) -> None:
    """429 at once, before any tokenizing, for a key this process knows is out of requests."""
    principal = record.principal
    limits = principal.limits
    if principal.api_key_id is None or limits is None or limits.rpm is None:
        return
    memo: RefusalMemo = request.app.state.refusal_memo
    decision = memo.refusal(principal.api_key_id, limits)
    if decision is not None:
        record.rate_decision = decision
        raise _rpm_refusal(limits, decision)


def _rpm_refusal(limits: RateLimits, decision: RateDecision) -> ApiError:
    wait = math.ceil(decision.retry_after or 1)
    return ApiError(
        429,
        f"Rate limit reached for this API key on requests per min (RPM): Limit {limits.rpm}. "
        f"Please try again in {wait}s.",
        code="rate_limit_exceeded",
        type="requests",
        headers=decision.headers(),
    )


async def admit(
    request: Request, record: RequestRecord, *, tokens: int, most: int | None = None
) -> None:
    """Reserve one request and `tokens` (prompt + requested completion) for the record's key;
    `most`: what it may use at most where it stated no max_tokens (`RateLimiter.admit`).

    The reservation is settled to the real token count when the response ends
    (see the usage middleware); keys without limits cost no Redis round trip.
    """
    principal = record.principal
    limits = principal.limits
    if principal.api_key_id is None or limits is None:
        return
    if limits.rpm is None and limits.tpm is None:
        return
    limiter = request.app.state.rate_limiter
    decision = await admit_or_release(
        limiter,
        principal.api_key_id,
        limits,
        request_id=record.request_id or "",
        tokens=tokens,
        most=most,
    )
    record.rate_decision = decision
    if decision.allowed:
        record.reserved_tokens = decision.reserved_tokens
        return
    headers = decision.headers()
    if decision.too_large:
        raise ApiError(
            429,
            f"Request too large: it needs {tokens} tokens and this key allows {limits.tpm} "
            "tokens per minute. Reduce the prompt or max_tokens.",
            code="rate_limit_exceeded",
            type="tokens",
            headers=headers,
        )
    request.app.state.refusal_memo.remember(principal.api_key_id, limits, decision, tokens)
    if limits.rpm is not None and decision.remaining_requests == 0:
        raise _rpm_refusal(limits, decision)
    wait = math.ceil(decision.retry_after or 1)
    what = (
        f"tokens per min (TPM): Limit {limits.tpm}, Used {decision.used_tokens}, Requested {tokens}"
    )
    raise ApiError(
        429,
        f"Rate limit reached for this API key on {what}. Please try again in {wait}s.",
        code="rate_limit_exceeded",
        type="tokens",
        headers=headers,
    )


async def admit_or_release(
    limiter: RateLimiter,
    key_id: str,
    limits: RateLimits,
    *,
    request_id: str,
    tokens: int,
    most: int | None = None,
) -> RateDecision:
    """`limiter.admit`, except that a caller cancelled mid-call (client gone) leaks nothing.

    The Lua script may already have reserved the tokens when the cancellation
    lands, and nobody would settle them: the key would be short of that many
    tokens for a whole window. So the call runs shielded, and if the caller
    goes away an admitted reservation is settled to 0 once the call returns
    (the request still counts towards rpm: it was made).
    """
    call = asyncio.ensure_future(
        limiter.admit(key_id, limits, request_id=request_id, tokens=tokens, most=most)
    )
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        call.add_done_callback(lambda done: _release(limiter, key_id, request_id, done))
        raise


def _release(
    limiter: RateLimiter, key_id: str, request_id: str, call: asyncio.Future[RateDecision]
) -> None:
    if call.cancelled() or call.exception() is not None or not call.result().allowed:
        return
    task = asyncio.get_running_loop().create_task(limiter.settle(key_id, request_id, 0))
    _releasing.add(task)
    task.add_done_callback(_released)


def _released(task: asyncio.Task[None]) -> None:
    _releasing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("releasing an abandoned rate-limit reservation failed: %s", task.exception())
