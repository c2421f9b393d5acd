"""The intake thread: take requests from the model's stream into free slots only.

Back-pressure: each XREADGROUP asks for exactly as many messages as the
worker has free slots (`Inflight.reserve`), so requests the engine could not
admit now stay in the stream where any other worker of the model can take
them. Everything that can be checked without the engine is checked here, off
the engine thread: the payload decodes, the deadline has not passed, the
sampling parameters are valid. Failures become error replies through the
publisher (which also XACKs); good requests go to the engine loop's queue.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from conveyor.bus import REQUEST_FIELD, WORKER_GROUP, BusNames
from conveyor.protocol import ErrorInfo, GenerateRequest
from engine.sampling_params import SamplingParamError, SamplingParams
from workers.dead_letters import dead_letter
from workers.inflight import Inflight, Ticket
from workers.publisher import Failed, Publisher

logger = logging.getLogger(__name__)

# The stream entry field holding `GenerateRequest.encode()` (what the API XADDs).

_BLOCK_MS = 100
_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


def sampling_params_from_wire(sampling: dict[str, Any]) -> SamplingParams:
    """SamplingParams from JSON: names checked, logit_bias keys made ints again (JSON has str)."""
    if not isinstance(sampling, dict):
        raise SamplingParamError("sampling", "must be an object")
    unknown = sorted(set(sampling) - _SAMPLING_FIELDS)
    if unknown:
        raise SamplingParamError(unknown[0], "is not a supported sampling parameter")
    fields = dict(sampling)
    bias = fields.get("logit_bias")
    if isinstance(bias, dict):
        try:
            fields["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise SamplingParamError(
                "logit_bias", "keys must be token ids and values numbers"
            ) from None
    try:
        return SamplingParams(**fields)
    except SamplingParamError:
        raise
    except (TypeError, ValueError) as exc:
        # A value of the wrong type, e.g. "n": "2", surfaces as a TypeError deep inside.
        raise SamplingParamError("sampling", str(exc)) from None


def bad_request(exc: ValueError) -> ErrorInfo:
    """The 400 for input the engine refused; the parameter is named where we know it."""
    param = getattr(exc, "param", None)
    message = str(exc)
    if param is None:
        # Engine messages read "<param>: <what is wrong>" (e.g. "prompt: ... tokens").
        head, sep, _ = message.partition(": ")
        if sep and head.isidentifier():
            param = head
    return ErrorInfo(message=message, type="invalid_request_error", param=param, status=400)


class Intake:
    """Reads new messages for this worker and turns each into a ticket or an error reply."""

    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        model: str,
        instance: str,
        inflight: Inflight,
        publisher: Publisher,
        work: queue.Queue[Ticket],
        on_lost_group: Callable[[], None],
    ) -> None:
        self.client = client
        self.names = names
        self.model = model
        self.stream = names.requests(model)
        self.instance = instance
        self.inflight = inflight
        self.publisher = publisher
        self.work = work
        self.on_lost_group = on_lost_group

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            slots = self.inflight.reserve(self.inflight.capacity, timeout=_BLOCK_MS / 1000)
            if not slots:
                continue
            try:
                reply = self.client.xreadgroup(
                    WORKER_GROUP, self.instance, {self.stream: ">"}, count=slots, block=_BLOCK_MS
                )
            except redis.RedisError as exc:
                self.inflight.unreserve(slots)
                logger.warning("reading %s failed (%s); retrying", self.stream, exc)
                if "NOGROUP" in str(exc):
                    self._recover()
                stopping.wait(0.5)
                continue
            entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
            self.inflight.unreserve(slots - len(entries))
            for stream_id, fields in entries:
                self.accept(stream_id, fields, attempt=1)

    def _recover(self) -> None:
        """Redis lost the stream (restart without persistence, flush): announce again."""
        try:
            self.on_lost_group()
        except redis.RedisError as exc:
            logger.warning("re-announcing %s failed (%s)", self.model, exc)

    def accept(self, stream_id: str, fields: dict[str, str] | None, attempt: int) -> None:
        """Route one delivered message; the caller has reserved a slot for it."""
        try:
            request = decode_entry(fields)
        except (TypeError, ValueError, KeyError) as exc:
            self.inflight.unreserve(1)
            self._malformed(stream_id, fields or {}, attempt, exc)
            return
        params: SamplingParams | None = None
        error: ErrorInfo | None = None
        if request.deadline is not None and request.deadline < time.time():
            error = ErrorInfo(
                message=(
                    f"the request expired in the queue ({time.time() - request.deadline:.1f} s "
                    "past its deadline) before a worker could start it"
                ),
                type="timeout",
                status=503,
            )
        else:
            try:
                _check_prompt(request.prompt_token_ids)
                params = sampling_params_from_wire(request.sampling)
            except SamplingParamError as exc:
                error = bad_request(exc)
        ticket = Ticket(stream_id, request, attempt, params)
        if not self.inflight.admit(ticket):
            error = ErrorInfo(
                message=f"request id {request.id!r} is already being served",
                type="invalid_request_error",
                param="id",
                status=400,
            )
        if error is not None:
            self.publisher.put(Failed(ticket, error))
        else:
            self.work.put(ticket)

    def _malformed(
        self, stream_id: str, fields: dict[str, str], attempt: int, exc: Exception
    ) -> None:
        """No reply address to answer: keep it for operators and take it off the stream."""
        logger.error("undecodable message %s on %s: %s", stream_id, self.stream, exc)
        try:
            dead_letter(
                self.client,
                self.names,
                self.model,
                stream_id,
                fields,
                f"undecodable: {exc}",
                attempt,
                self.instance,
            )
            self.client.xack(self.stream, WORKER_GROUP, stream_id)
            self.client.xdel(self.stream, stream_id)
        except redis.RedisError as err:
            logger.warning("could not dead-letter %s (%s); a janitor will retry", stream_id, err)


def _check_prompt(tokens: object) -> None:
    """Types only (cheap); ranges and length are the engine's to judge."""
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise SamplingParamError("prompt", "must be a list of token ids")


def decode_entry(fields: dict[str, str] | None) -> GenerateRequest:
    """The request in a stream entry; raises for anything that has no usable reply address."""
    if not fields:
        raise ValueError("empty stream entry")
    raw = fields.get(REQUEST_FIELD)
    if raw is None and len(fields) == 1:
        raw = next(iter(fields.values()))
    if raw is None:
        raise KeyError(f"no {REQUEST_FIELD!r} field")
    request = GenerateRequest.decode(raw)
    if not isinstance(request.id, str) or not isinstance(request.reply_to, str):
        raise TypeError("id and reply_to must be strings")
    return request
