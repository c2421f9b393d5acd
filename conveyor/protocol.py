"""The plain messages API processes and engine workers exchange over Redis.

Every message is JSON with a schema version, so API replicas and workers of
adjacent releases can share one Redis during a rolling upgrade. Nothing here
imports torch: API processes import this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from conveyor.bus import INTERACTIVE_LANE

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class TokenLogprob:
    """One position's logprob (chosen token + alternatives), wire form of TokenLogprobs."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class GenerateRequest:
    """XADDed to the model's lane stream by the API; consumed by any worker of that model.

    `lane` says which stream the API meant it for (informational: a worker trusts
    the stream it read the entry from); peers of older releases omit it.
    """

    id: str
    reply_to: str
    model: str
    prompt_token_ids: list[int]
    sampling: dict[str, Any]
    priority: int = 0
    deadline: float | None = None
    arrival: float = 0.0
    stream: bool = True
    lane: str = INTERACTIVE_LANE
    # The LoRA adapter to generate with (None: the base model). Workers that announce no
    # adapters are older peers that would ignore it, so the API routes an adapter only
    # to a model every one of whose workers announces that adapter.
    lora: str | None = None
    # An embedding of the prompt instead of a generation: the pooling parameters
    # (engine/pooling_params.py, e.g. {"dimensions": 256}); `sampling` is then ignored.
    pooling: dict[str, Any] | None = None
    # Prefix-cache blocks are shared only between requests with the same salt (the API's
    # `api/cache_salt.py`: the caller's project and the request's own `cache_salt`).
    cache_salt: str | None = None
    # The id the client sees and names in `POST /abort_requests` (its response's id) where
    # it is not `id`: a client's X-Request-Id need not be unique, `id` must be.
    public_id: str | None = None
    version: int = PROTOCOL_VERSION

    @property
    def client_id(self) -> str:
        """The id the client knows this request by."""
        return self.public_id or self.id

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> GenerateRequest:
        data = _known_fields(cls, json.loads(raw))
        return cls(**data, version=PROTOCOL_VERSION)


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ErrorInfo:
    """An OpenAI-shaped error a worker reports for one request."""

    message: str
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    status: int = 500


@dataclass(frozen=True)
class ReplyMessage:
    """PUBLISHed to `conveyor:reply:{api_instance}`: one request's progress.

    `seq` increases by one per message of a request, so the API can detect a
    lost message and fall back to the stored result.
    """

    id: str
    seq: int
    choices: list[ChoiceDelta] = field(default_factory=list)
    finished: bool = False
    usage: Usage | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: ErrorInfo | None = None
    times: dict[str, float | None] | None = None
    worker: str = ""
    # Delivery attempt of the request (1 first; higher after a dead worker's
    # request was reclaimed): a new attempt restarts `seq` and the text.
    attempt: int = 1
    # An embedding request's vector: little-endian float32, base64 (OpenAI's
    # encoding_format "base64" as it is, and a third of the JSON floats' size).
    embedding: str | None = None
    # Prompt tokens served from the prefix cache, on a streamed request's first message
    # (the final one has them in `usage`): a stream the client leaves early is still
    # billed its cached share.
    cached_tokens: int | None = None
    version: int = PROTOCOL_VERSION

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> ReplyMessage:
        data = _known_fields(cls, json.loads(raw))
        choices = [_choice(c) for c in data.pop("choices", [])]
        usage = data.pop("usage", None)
        error = data.pop("error", None)
        prompt_lps = data.pop("prompt_logprobs", None)
        return cls(
            choices=choices,
            usage=Usage(**usage) if usage else None,
            error=ErrorInfo(**error) if error else None,
            prompt_logprobs=(
                [TokenLogprob(**lp) if lp else None for lp in prompt_lps]
                if prompt_lps is not None
                else None
            ),
            **data,
        )


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Drop fields this release does not know (a newer peer may send more) and the version."""
    names = {f.name for f in fields(cls)} - {"version"}
    return {k: v for k, v in data.items() if k in names}


def _choice(data: dict[str, Any]) -> ChoiceDelta:
    data = _known_fields(ChoiceDelta, data)
    lps = data.pop("logprobs", None)
    return ChoiceDelta(
        logprobs=[TokenLogprob(**lp) for lp in lps] if lps is not None else None, **data
    )
