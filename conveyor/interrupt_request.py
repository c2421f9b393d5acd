"""What vLLM's `POST /abort_requests` asks of every worker: end these requests (or all of
them) now, each answered with the text it has and finish_reason "abort", without pausing
anything (no torch: the API writes it, workers read it).

A request is named by the id its client sees (`GenerateRequest.public_id`: the response's
`id`, "chatcmpl-<X-Request-Id>" when the client sent that header). Only requests queued
before the call are ended: a client that sends a request again under the same id
afterwards gets it run (both times are Redis's clock: workers/interrupt_book.py). The API
publishes each call on the `interrupt` channel and keeps it in the `interrupted` sorted
set (scored by its time) for as long as a request sent before it may still be queued, so
a worker that subscribes later (started, or back from a lost connection) still ends the
queued requests it reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.json_object import json_object

# Past the request timeout: a request's deadline is checked with some grace.
_GRACE_SECONDS = 60.0

# The sorted set's member for "every request"; an id's member is `ID_MEMBER + id`.
ALL_MEMBER = "*"
ID_MEMBER = "id:"


def interrupt_memory(request_timeout: float) -> float:
    """How long a call is remembered: as long as a request sent before it may be queued."""
    return request_timeout + _GRACE_SECONDS


@dataclass(frozen=True)
class InterruptRequest:
    """End the requests named by `ids` (every one when empty) queued by `at` (epoch
    seconds on Redis's clock, as a request's stream entry id: workers/interrupt_book.py)."""

    ids: tuple[str, ...]
    at: float

    @property
    def every_request(self) -> bool:
        return not self.ids

    def encode(self) -> str:
        return json.dumps({"ids": list(self.ids), "at": self.at})

    @classmethod
    def decode(cls, raw: str | bytes | None) -> InterruptRequest | None:
        """None for an unreadable message (a peer's bug must not stop the listener)."""
        value = json_object(raw)
        if value is None:
            return None
        ids, at = value.get("ids"), value.get("at")
        if (
            not isinstance(ids, list)
            or not all(isinstance(i, str) for i in ids)
            or not isinstance(at, int | float)
            or isinstance(at, bool)
        ):
            return None
        return cls(tuple(ids), float(at))

    def members(self) -> dict[str, float]:
        """The request's entries in the `interrupted` sorted set (member -> score)."""
        if self.every_request:
            return {ALL_MEMBER: self.at}
        return {ID_MEMBER + request_id: self.at for request_id in self.ids}

    @classmethod
    def from_members(cls, rows: Iterable[tuple[str | bytes, float]]) -> list[InterruptRequest]:
        """The requests the sorted set's (member, score) rows hold, one per row."""
        found = []
        for member, score in rows:
            name = member.decode() if isinstance(member, bytes) else member
            if name == ALL_MEMBER:
                found.append(cls((), float(score)))
            elif name.startswith(ID_MEMBER):
                found.append(cls((name.removeprefix(ID_MEMBER),), float(score)))
        return found
