"""Run one batch line through the API, exactly as a client request, and shape its result.

Going through the API (rather than around it) means a line gets the same
validation, chat template, response body and request log as an interactive
request; the service key and the batch headers make the API bill the
batch's project and queue the line in the model's batch lane. Overload
and an unreachable API are waited out; anything else is the line's answer,
good or bad. A connection the API breaks while answering this line, again
and again, is an answer too: waiting would hold the batch for ever.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

from conveyor.db.batch_store import LineResult
from workers.batch.log_throttle import LogThrottle
from workers.batch.validation import BatchLine

logger = logging.getLogger(__name__)

WAIT_STATUSES = frozenset({429, 503})
# The API refusing the batch worker's own key is a deployment mistake, not the line's
# answer: every line would fail the same way. Wait (loudly) for the operator instead.
MISCONFIGURED_STATUSES = frozenset({401, 403})
BACKOFF_SECONDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Connections made and then broken while the line was sent or answered: once is an API
# restart; this many times in a row is the line (say, a body the API cuts off unread).
MAX_BROKEN_CONNECTIONS = 3
# Not connecting at all is the API being down (or the wrong --batch-api-url): wait for it.
NOT_CONNECTED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Waiting lines say why at most this often, for the whole process.
WAITING_LOG_SECONDS = 30.0
waiting_log = LogThrottle(WAITING_LOG_SECONDS)


@dataclass(frozen=True)
class LineContext:
    """What every line of one batch sends along."""

    batch_id: str
    project_id: str | None
    api_key_id: str | None
    service_key: str | None
    attempts: int

    def headers(self, line: int | None = None) -> dict[str, str]:
        """`line` (its number in the input file) lets the API replay an answer this
        batch's line already got, to a worker resuming the batch (api/batch_line_answers)."""
        headers = {"x-conveyor-batch-id": self.batch_id}
        if line is not None:
            headers["x-conveyor-batch-line"] = str(line)
        if self.service_key:
            headers["authorization"] = f"Bearer {self.service_key}"
        if self.project_id:
            headers["x-conveyor-project-id"] = self.project_id
        if self.api_key_id:
            headers["x-conveyor-api-key-id"] = self.api_key_id
        return headers


def new_line_id() -> str:
    """An output or error line's `id`: unique across batches, as OpenAI's are."""
    return f"batch_req_{secrets.token_hex(12)}"


async def run_line(client: httpx.AsyncClient, context: LineContext, line: BatchLine) -> LineResult:
    """The line's answer. Waiting for capacity (429/503) or for an API that is down is not an
    answer: those are retried until the runner stops (cancel, expiry, shutdown); a 504 (the
    line itself timed out) is retried `context.attempts` times, then recorded as failed."""
    line_id = new_line_id()
    timeouts = 0
    waits = 0
    broken = 0
    while True:
        try:
            response = await client.post(
                line.url, json=line.body, headers=context.headers(line.line)
            )
        except NOT_CONNECTED as exc:
            if waiting_log.ready("unreachable"):
                logger.warning(
                    "batch %s: cannot reach the API at %s (%s); lines wait for it (is "
                    "--batch-api-url right?)",
                    context.batch_id,
                    client.base_url,
                    _describe(exc),
                )
            response = None
        except httpx.TransportError as exc:
            broken += 1
            logger.info(
                "batch %s line %d: the API broke the connection (%s), %d of %d",
                context.batch_id,
                line.line,
                _describe(exc),
                broken,
                MAX_BROKEN_CONNECTIONS,
            )
            if broken >= MAX_BROKEN_CONNECTIONS:
                return _broken_result(line, line_id, exc)
            response = None
        if response is not None:
            broken = 0
            if response.status_code == 504:
                timeouts += 1
                if timeouts >= context.attempts:
                    return _result(line, line_id, response)
            elif response.status_code in MISCONFIGURED_STATUSES:
                if waiting_log.ready("refused"):
                    logger.error(
                        "batch %s: the API refuses this batch worker's key (HTTP %d); set the "
                        "same --service-key (or --admin-key) on the API and the batch workers",
                        context.batch_id,
                        response.status_code,
                    )
            elif response.status_code not in WAIT_STATUSES:
                return _result(line, line_id, response)
        await asyncio.sleep(BACKOFF_SECONDS[min(waits, len(BACKOFF_SECONDS) - 1)])
        waits += 1


def _describe(exc: httpx.TransportError) -> str:
    """httpx's transport errors often have an empty message; the class name still says it."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _broken_result(line: BatchLine, line_id: str, exc: httpx.TransportError) -> LineResult:
    message = (
        f"the API closed the connection {MAX_BROKEN_CONNECTIONS} times while this line was "
        f"sent or answered ({_describe(exc)}); a body over the API's --max-body-bytes that it "
        "cannot read to the end does this"
    )
    return _failed(line, line_id, "connection_closed", message)


def _failed(line: BatchLine, line_id: str, code: str, message: str) -> LineResult:
    """A line for the error file that got no HTTP answer: `error` says why, as OpenAI's
    output lines do for "a non-HTTP error"."""
    return LineResult(
        line=line.line,
        custom_id=line.custom_id,
        succeeded=False,
        payload={
            "id": line_id,
            "custom_id": line.custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
    )


def _token_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) from completions' usage or the Responses API's."""
    if "input_tokens" in usage:
        details = usage.get("input_tokens_details") or {}
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    else:
        details = usage.get("prompt_tokens_details") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return int(prompt or 0), int(completion or 0), int(details.get("cached_tokens") or 0)


def _result(line: BatchLine, line_id: str, response: httpx.Response) -> LineResult:
    try:
        body: Any = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:1000], "code": None}}
    answer = {
        "status_code": response.status_code,
        # The HTTP request's id (`req_...`), as OpenAI's lines carry, not the body's `id`:
        # one kind of id on every line, the one `conveyor requests find` looks up.
        "request_id": response.headers.get("x-request-id") or line_id,
        "body": body,
    }
    # An HTTP answer, success or not, is the line's `response`; `error` stays null, as in
    # OpenAI's output lines (the API's error is in the body). Only a 200 is an output line.
    payload = {"id": line_id, "custom_id": line.custom_id, "response": answer, "error": None}
    if response.status_code != 200:
        return LineResult(
            line=line.line, custom_id=line.custom_id, succeeded=False, payload=payload
        )
    prompt_tokens, completion_tokens, cached_tokens = _token_counts(body.get("usage") or {})
    return LineResult(
        line=line.line,
        custom_id=line.custom_id,
        succeeded=True,
        payload=payload,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
    )
