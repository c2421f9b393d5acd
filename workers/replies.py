"""Turning one request's engine deltas into wire messages and its final result.

A `ReplyBuilder` lives for one request in the publisher thread: it numbers
the messages (`seq` 0, 1, 2, ... so the API can spot a lost one), converts
engine structs into protocol structs, and accumulates the whole result that
is stored under `result:{id}` when the request finishes.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field

import torch

from conveyor.protocol import ChoiceDelta, ErrorInfo, ReplyMessage, TokenLogprob, Usage
from engine.outputs import RequestOutput
from engine.sampler import TokenLogprobs
from workers.inflight import Ticket


def wire_logprob(lp: TokenLogprobs) -> TokenLogprob:
    return TokenLogprob(
        token_id=lp.token_id, logprob=lp.logprob, rank=lp.rank, top=[tuple(t) for t in lp.top]
    )


def wire_embedding(vector: torch.Tensor) -> str:
    """A vector as the protocol carries it: little-endian float32 bytes, base64."""
    data = vector.to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return base64.b64encode(data.tobytes()).decode("ascii")


@dataclass
class _Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_output_tokens: int = 0


class ReplyBuilder:
    """Per-request state of the publisher: next seq, accumulated choices, timing marks."""

    def __init__(self, ticket: Ticket, worker: str) -> None:
        self.ticket = ticket
        self.worker = worker
        self.seq = 0
        self.choices: dict[int, _Choice] = {}
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.usage: Usage | None = None
        self.times: dict[str, float | None] | None = None
        # Each choice's latest token time, for the inter-token latency of its next one
        # (empty until the request's first token).
        self.choice_token_times: dict[int, float] = {}
        self.embedding: str | None = None

    @property
    def streaming(self) -> bool:
        return self.ticket.request.stream

    def absorb(self, out: RequestOutput) -> ReplyMessage | None:
        """Fold one step's output into the result; returns its delta message when streaming.

        A non-streaming request gets no token messages: a first one without text when
        it starts (seq 0: the API learns which worker holds it, so it can tell a busy
        worker from a lost request, see api/reply_router.py) unless it finishes in its
        first step, then `result()`, which an API that accumulates deltas and one that
        reads the stored result both read correctly.
        """
        deltas: list[ChoiceDelta] = []
        for o in out.outputs:
            lps = [wire_logprob(lp) for lp in o.logprobs] if o.logprobs is not None else None
            deltas.append(
                ChoiceDelta(o.index, o.text, list(o.token_ids), lps, o.finish_reason, o.stop_reason)
            )
            choice = self.choices.setdefault(o.index, _Choice(o.index))
            choice.text += o.text
            choice.token_ids.extend(o.token_ids)
            if lps is not None:
                if choice.logprobs is None:
                    choice.logprobs = []
                choice.logprobs.extend(lps)
            if o.finish_reason is not None:
                choice.finish_reason, choice.stop_reason = o.finish_reason, o.stop_reason
            choice.num_output_tokens = o.num_output_tokens
        if out.embedding is not None:
            self.embedding = wire_embedding(out.embedding)
        prompt_lps = None
        if out.prompt_logprobs is not None:
            prompt_lps = [wire_logprob(lp) if lp else None for lp in out.prompt_logprobs]
            self.prompt_logprobs = prompt_lps
        first = self.times is None
        if first or out.finished:
            self.times = asdict(out.times)
        if out.finished:
            self.usage = Usage(
                prompt_tokens=out.num_prompt_tokens,
                completion_tokens=sum(c.num_output_tokens for c in self.choices.values()),
                cached_tokens=out.num_cached_tokens,
            )
        if not self.streaming:
            if first and not out.finished:
                return self._next(times=self.times, cached_tokens=out.num_cached_tokens)
            return None
        return self._next(
            choices=deltas,
            finished=out.finished,
            usage=self.usage if out.finished else None,
            prompt_logprobs=prompt_lps,
            embedding=self.embedding if out.finished else None,
            # Timing marks only where the API needs them: first message (queue time,
            # TTFT) and last (e2e); token messages stay small.
            times=self.times if first or out.finished else None,
            cached_tokens=out.num_cached_tokens if first else None,
        )

    def result(self) -> ReplyMessage:
        """Everything the request produced, as one finished message (stored under result:{id})."""
        choices = [
            ChoiceDelta(c.index, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason)
            for c in sorted(self.choices.values(), key=lambda c: c.index)
        ]
        # The final message's seq: a stream's last delta already took one; otherwise
        # this is the message after the start message, if one went out.
        seq = max(self.seq - 1, 0) if self.streaming else self.seq
        return ReplyMessage(
            id=self.ticket.request_id,
            seq=seq,
            worker=self.worker,
            attempt=self.ticket.attempt,
            choices=choices,
            finished=True,
            usage=self.usage,
            prompt_logprobs=self.prompt_logprobs,
            times=self.times,
            embedding=self.embedding,
        )

    def error(self, error: ErrorInfo) -> ReplyMessage:
        """The request's last message when it failed: finished, carrying only the error."""
        return self._next(choices=[], finished=True, error=error)

    def _next(self, **fields: object) -> ReplyMessage:
        message = ReplyMessage(
            id=self.ticket.request_id,
            seq=self.seq,
            worker=self.worker,
            attempt=self.ticket.attempt,
            **fields,  # type: ignore[arg-type]
        )
        self.seq += 1
        return message
