"""A chat completion's or completion's id, as vLLM makes it: `<prefix>-<the client's
X-Request-Id>`, else `<prefix>-<the body's request_id>`, else `<prefix>-<random hex>`.

A client that names its requests can so abort one it has not heard from yet
(POST /abort_requests) and find it in logs. Its names need not be unique, so the id a
request is queued, routed, rate-limited and billed under stays a new random one: the
`public` id is only shown (the response's `id`) and matched by /abort_requests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import Request

from api.request_id_header import client_request_id


@dataclass(frozen=True)
class ResponseIds:
    internal: str
    public: str | None = None  # None: the same as `internal`

    @property
    def shown(self) -> str:
        return self.public or self.internal


def response_ids(request: Request, prefix: str, body_request_id: str | None) -> ResponseIds:
    internal = f"{prefix}-{uuid.uuid4().hex}"
    chosen = client_request_id(request.scope) or body_request_id
    return ResponseIds(internal, None if chosen is None else f"{prefix}-{chosen}")
