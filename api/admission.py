"""Admit a request against its key's rpm/tpm budget, or refuse it with OpenAI's 429."""

from __future__ import annotations

import math

from fastapi import Request

from api.errors import ApiError
from api.request_record import RequestRecord


async def admit(request: Request, record: RequestRecord, *, tokens: int) -> None:
    """Reserve one request and `tokens` (prompt + requested completion) for the record's key.

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
    decision = await limiter.admit(
        principal.api_key_id, limits, request_id=record.request_id or "", tokens=tokens
    )
    record.rate_decision = decision
    if decision.allowed:
        record.reserved_tokens = tokens
        return
    headers = decision.headers()
    if decision.too_large:
        raise ApiError(
            429,
            f"Request too large: it needs {tokens} tokens and this key allows {limits.tpm} "
            "tokens per minute. Reduce the prompt or max_tokens.",
            code="rate_limit_exceeded",
            headers=headers,
        )
    wait = math.ceil(decision.retry_after or 1)
    if limits.rpm is not None and decision.remaining_requests == 0:
        what = f"requests per min (RPM): Limit {limits.rpm}"
    else:
        what = f"tokens per min (TPM): Limit {limits.tpm}, Requested {tokens}"
    raise ApiError(
        429,
        f"Rate limit reached for this API key on {what}. Please try again in {wait}s.",
        code="rate_limit_exceeded",
        headers=headers,
    )
