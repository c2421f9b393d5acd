"""What one inference request did, filled in as it runs and logged when it ends.

The route and the stream fill it in (who called, which model, how many
tokens; the reply readers know the first-token time and the engine's queue
time); the usage middleware stamps status and latency
when the response is done and hands it to the request-log buffer. Streamed
tokens are counted as they are forwarded, so a stream the client aborts is
logged with the tokens it actually received.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from api.auth import ANONYMOUS, Principal
from api.rate_limiter import RateDecision
from api.reply_router import ReplyReader


@dataclass
class RequestRecord:
    endpoint: str
    created_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal = ANONYMOUS
    request_id: str | None = None
    # The response's x-request-id (api/request_id_header.py), by which a user's report
    # finds the row.
    http_request_id: str | None = None
    # The response's `id` as its client got it (api/response_ids.py).
    response_id: str | None = None
    model: str | None = None
    batch_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    prompt_text: str | None = None
    status_code: int | None = None
    readers: list[ReplyReader] = field(default_factory=list)
    rate_decision: RateDecision | None = None
    # Tokens reserved against the key's tpm at admission, settled to the real count at the end.
    reserved_tokens: int = 0
    # A background response's run: the request is logged and settled when it ends, not
    # when the HTTP call (which returned at once) did.
    background: asyncio.Task[None] | None = None
    # A batch line answered before, sent again by a resumed batch worker: its stored
    # answer goes back, and it is neither logged nor billed again.
    replayed: bool = False
    # The batch line this request claimed (its answer's key): kept with a 200 answer,
    # else released when the request ends (api/batch_line_answers.py).
    line_claim: str | None = None

    def _ttft(self) -> float | None:
        firsts = [r.first_token_at for r in self.readers if r.first_token_at is not None]
        return min(firsts) - self.started if firsts else None

    def _queue_time(self) -> float | None:
        """The engine's own arrival -> scheduled gap (one clock: the worker's), worst prompt."""
        waits = []
        for reader in self.readers:
            times = reader.worker_times or {}
            arrival, scheduled = times.get("arrival"), times.get("scheduled")
            if arrival is not None and scheduled is not None:
                waits.append(max(0.0, scheduled - arrival))
        return max(waits) if waits else None

    @property
    def lane(self) -> str:
        """Batch lines queue behind interactive requests (their own stream, lower priority)."""
        return "batch" if self.batch_id else "interactive"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def log_row(self, *, log_prompts: bool) -> dict[str, Any]:
        end = time.perf_counter()
        return {
            "request_id": self.request_id or "",
            "http_request_id": self.http_request_id,
            "response_id": self.response_id,
            "project_id": self.principal.project_id,
            "api_key_id": self.principal.api_key_id,
            "batch_id": self.batch_id,
            "model": self.model,
            "endpoint": self.endpoint,
            "status_code": self.status_code or 500,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason,
            "queue_time": self._queue_time(),
            "ttft": self._ttft(),
            "latency": end - self.started,
            "created_at": int(self.created_at),
            "prompt": self.prompt_text if log_prompts else None,
        }
