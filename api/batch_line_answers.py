"""A batch line answered once is never generated or billed again.

A batch worker records each line's answer in SQL after the API sent it. A
worker killed in between (SIGKILL, OOM, a lost node) leaves the line
unrecorded, and the worker that resumes the batch sends it again: the API
would generate it a second time and bill it twice (QA: 44 billed requests for
a 40-line batch). So:

- a batch line (service key, batch id and line number headers) first claims
  its line (`SET NX` of a marker that lives as long as a request may): while an
  earlier request for the same line still runs (its worker's node was lost, so
  the API never saw the client go), a resend gets a 503 with Retry-After,
  which the batch worker waits out;
- its 200 answer is kept in Redis before the body leaves (up to
  MAX_KEPT_BYTES), keyed by batch and line number, and the claim dropped; an
  answer that is not a 200, or a client that left, drops the claim only;
- the same line sent again gets the kept answer back (`x-conveyor-replayed:
  true`), with no generation and no request-log row;
- the batch worker deletes the answer once the line is recorded, so only what
  a worker never recorded waits out the TTL.

Redis that cannot be asked runs the line unprotected, as before.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.auth import Principal
from api.errors import ApiError
from conveyor.bus import BusNames

logger = logging.getLogger(__name__)

# A batch's completion window (OpenAI's one choice is 24h): a line left unrecorded longer
# belongs to a batch that has expired.
ANSWER_TTL_SECONDS = 24 * 3600
# A bigger answer (an embeddings line of thousands of inputs) is not kept: Redis memory
# matters more than the rare rerun of such a line.
MAX_KEPT_BYTES = 16 << 20
# How long past the request timeout a claim outlives an API process that died holding it.
CLAIM_GRACE_SECONDS = 30
REPLAYED_HEADER = "x-conveyor-replayed"


class StoredLineAnswer(Exception):
    """Raised while authenticating a batch line the API already answered: its answer."""

    def __init__(self, body: bytes) -> None:
        super().__init__("this batch line was answered before")
        self.body = body


def answer_key(names: BusNames, principal: Principal) -> str | None:
    """Where a batch line's answer is kept; None for any other request."""
    if principal.batch_id is None or principal.batch_line is None:
        return None
    return names.batch_line_answer(principal.batch_id, principal.batch_line)


def claim_key(answer: str) -> str:
    """The marker of a request answering the line now."""
    return f"{answer}:claim"


async def claim_line(redis: Redis, key: str, request_timeout: float) -> bool:
    """Claim the batch line whose answer lives at `key`: True when this request is to
    answer it; StoredLineAnswer when it was answered; a 503 while another request
    answers it. False (run it, unclaimed) when Redis cannot say."""
    try:
        await _raise_if_kept(redis, key)
        hold = int(request_timeout + CLAIM_GRACE_SECONDS)
        if not await redis.set(claim_key(key), "1", nx=True, ex=hold):
            raise ApiError(
                503,
                "an earlier request for this batch line is still being answered; retry shortly",
                code="batch_line_in_progress",
                headers={"Retry-After": "2"},
            )
        # Answered and released between the two calls above: the answer is there now.
        await _raise_if_kept(redis, key, claimed=True)
    except (RedisError, UnicodeDecodeError) as exc:
        logger.warning("could not claim the batch line %s (%s); running it unclaimed", key, exc)
        return False
    return True


async def _raise_if_kept(redis: Redis, key: str, *, claimed: bool = False) -> None:
    """Raise StoredLineAnswer with the kept answer, if there is one (dropping this
    request's own claim first)."""
    body = await redis.get(key)
    if body is None:
        return
    if claimed:
        await redis.delete(claim_key(key))
    raise StoredLineAnswer(body.encode() if isinstance(body, str) else body)


async def keep_answer(redis: Redis, key: str, body: bytes) -> bool:
    """Keep a 200 answer (before it is sent) and drop the line's claim; False when it is
    too big to keep or Redis failed (the claim is then the caller's to drop)."""
    if len(body) > MAX_KEPT_BYTES:
        return False
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, body, ex=ANSWER_TTL_SECONDS)
            pipe.delete(claim_key(key))
            await pipe.execute()
    except RedisError as exc:
        logger.warning("could not keep the answer of %s: %s", key, exc)
        return False
    return True


async def release_claim(redis: Redis, key: str) -> None:
    """The request ended without a kept answer: a resend may run the line again."""
    try:
        await redis.delete(claim_key(key))
    except RedisError as exc:  # it expires on its own
        logger.warning("could not release the claim on %s: %s", key, exc)


async def on_stored_answer(_: Request, exc: Exception) -> Response:
    """The stored answer, as it was sent the first time."""
    assert isinstance(exc, StoredLineAnswer)
    return Response(exc.body, media_type="application/json", headers={REPLAYED_HEADER: "true"})
