"""The intake thread: take requests from the model's lane streams into free slots only.

Back-pressure: each read asks for at most as many messages as the worker has
free slots (`Inflight.reserve`), so requests the engine could not admit now
stay in the stream where any other worker of the model can take them.

Lanes: the interactive stream is read first and the batch stream only with the
slots left over, so a queue of batch lines never delays an interactive request;
batch requests also get an engine priority behind every interactive one (see
`engine_priority`), so the scheduler admits and preempts them last.

Everything that can be checked without the engine is checked here, off the
engine thread: the payload decodes, the deadline has not passed, the sampling
parameters are valid. Failures become error replies through the publisher
(which also XACKs); good requests go to the engine loop's queue.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import redis

from conveyor.bus import BATCH_LANE, INTERACTIVE_LANE, LANES, REQUEST_FIELD, WORKER_GROUP, BusNames
from conveyor.protocol import ErrorInfo, GenerateRequest
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError, SamplingParams
from engine.structured_output import StructuredOutput, StructuredOutputError
from workers.dead_letters import dead_letter
from workers.inflight import Inflight, Ticket
from workers.publisher import Failed, Publisher

logger = logging.getLogger(__name__)

_BLOCK_MS = 100
# How often a paused intake looks whether it may read again.
_PAUSE_POLL = 0.1
# Clients' `priority` is clamped to +-PRIORITY_LIMIT and batch requests are shifted by
# BATCH_PRIORITY_OFFSET (> 2 * PRIORITY_LIMIT), so every batch request sorts after every
# interactive one in the scheduler (lower value first) whatever priorities clients send.
PRIORITY_LIMIT = 1_000_000
BATCH_PRIORITY_OFFSET = 10_000_000
assert BATCH_PRIORITY_OFFSET > 2 * PRIORITY_LIMIT
# The lowest engine priority a batch request can have: the engine's background threshold.
BATCH_PRIORITY_FLOOR = BATCH_PRIORITY_OFFSET - PRIORITY_LIMIT
# Fields the engine derives itself are not taken from the wire.
_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - set(
    SamplingParams.DERIVED_FIELDS
)


def sampling_params_from_wire(sampling: dict[str, Any]) -> SamplingParams:
    """SamplingParams from JSON: names checked, logit_bias keys made ints again (JSON has str)."""
    fields = _known_fields(sampling, "sampling", _SAMPLING_FIELDS, "sampling")
    if fields.get("structured_output") is not None:
        try:
            fields["structured_output"] = StructuredOutput.from_wire(fields["structured_output"])
        except StructuredOutputError as exc:
            raise SamplingParamError("structured_output", str(exc)) from None
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


_POOLING_FIELDS = frozenset(f.name for f in dataclasses.fields(PoolingParams))


def pooling_params_from_wire(pooling: dict[str, Any]) -> PoolingParams:
    """PoolingParams from JSON, names checked (an unknown one is a newer peer's: refuse)."""
    return PoolingParams(**_known_fields(pooling, "pooling", _POOLING_FIELDS, "embedding"))


def _known_fields(wire: object, param: str, known: frozenset[str], kind: str) -> dict[str, Any]:
    """A copy of the wire object `param`, refused if it is not one or names a field we lack."""
    if not isinstance(wire, dict):
        raise SamplingParamError(param, "must be an object")
    unknown = sorted(set(wire) - known)
    if unknown:
        raise SamplingParamError(unknown[0], f"is not a supported {kind} parameter")
    return dict(wire)


def engine_priority(priority: int, lane: str) -> int:
    """The scheduler priority of a request: the client's, clamped, behind interactive if batch."""
    clamped = max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, priority))
    return clamped + BATCH_PRIORITY_OFFSET if lane == BATCH_LANE else clamped


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


def lora_not_served(model: str, lora: str) -> ErrorInfo:
    """The API offers an adapter only while every worker announces it, so a worker without
    it is a rollout or an unload in progress: worth a retry, not the client's mistake."""
    return ErrorInfo(
        message=(
            f"this worker of `{model}` does not serve the LoRA adapter `{lora}` now "
            "(it is being loaded or unloaded, or workers are configured differently); "
            "try again"
        ),
        code="no_worker",
        status=503,
    )


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
        prepare: Callable[[SamplingParams], None] | None = None,
        served_loras: Callable[[], Collection[str]] = tuple,
        classifier: bool = False,
        reads_token_types: bool = False,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.client = client
        # While true, nothing is read: the worker leaves the stream to its peers.
        self.paused = paused
        self.names = names
        self.model = model
        self.streams = {lane: names.requests(model, lane) for lane in LANES}
        self.lanes = {stream: lane for lane, stream in self.streams.items()}
        self.instance = instance
        self.inflight = inflight
        self.publisher = publisher
        self.work = work
        self.on_lost_group = on_lost_group
        # The engine's per-request preparation (compiling a structured-output constraint),
        # run here so the engine thread does not stall on it; raises SamplingParamError.
        self.prepare = prepare
        # The LoRA adapters this worker's engine serves now (they change at run time).
        self.served_loras = served_loras
        # A sequence classifier's worker takes only requests that know it is one.
        self.classifier = classifier
        # A classifier that reads token types (BERT's cross-encoders) takes only requests
        # that say where a pair's second text starts.
        self.reads_token_types = reads_token_types

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            if self.paused():
                stopping.wait(_PAUSE_POLL)
                continue
            slots = self.inflight.reserve(self.inflight.capacity, timeout=_BLOCK_MS / 1000)
            if not slots:
                continue
            try:
                entries = self.read(slots)
            except redis.RedisError as exc:
                self.inflight.unreserve(slots)
                logger.warning(
                    "reading the %s request streams failed (%s); retrying", self.model, exc
                )
                if "NOGROUP" in str(exc):
                    self._recover()
                stopping.wait(0.5)
                continue
            self.inflight.unreserve(slots - len(entries))
            for lane, stream_id, fields in entries:
                self.accept(stream_id, fields, attempt=1, lane=lane)

    def read(self, slots: int) -> list[tuple[str, str, dict[str, str]]]:
        """At most `slots` new entries as (lane, id, fields), interactive ones first.

        First a non-blocking read per lane in priority order, each for the slots still
        free. Only when every lane is empty, one blocking read waits on all of them;
        its COUNT applies per stream, so it asks each for `slots // len(LANES)` and the
        total never exceeds the free slots (an entry once delivered cannot be handed
        back). With a single free slot it waits on the interactive lane alone: a batch
        line arriving then is taken by the next poll, at most `_BLOCK_MS` later.
        """
        taken: list[tuple[str, str, dict[str, str]]] = []
        for lane in LANES:
            want = slots - len(taken)
            if want <= 0:
                return taken
            try:
                taken += self._read({self.streams[lane]: ">"}, want, block=None)
            except redis.RedisError:
                if not taken:
                    raise
                return taken  # keep what was delivered; the error shows again next round
        if taken:
            return taken
        if slots >= len(LANES):
            watch = {stream: ">" for stream in self.streams.values()}
            count = slots // len(LANES)
        else:
            watch, count = {self.streams[INTERACTIVE_LANE]: ">"}, slots
        got = self._read(watch, count, block=_BLOCK_MS)
        got.sort(key=lambda entry: LANES.index(entry[0]))  # stable: stream order kept
        return got

    def _read(
        self, streams: dict[str, str], count: int, block: int | None
    ) -> list[tuple[str, str, dict[str, str]]]:
        reply = self.client.xreadgroup(
            WORKER_GROUP, self.instance, streams, count=count, block=block
        )
        return [
            (self.lanes[stream], stream_id, fields)
            for stream, entries in reply or []
            for stream_id, fields in entries
        ]

    def _recover(self) -> None:
        """Redis lost the stream (restart without persistence, flush): announce again."""
        try:
            self.on_lost_group()
        except redis.RedisError as exc:
            logger.warning("re-announcing %s failed (%s)", self.model, exc)

    def accept(
        self,
        stream_id: str,
        fields: dict[str, str] | None,
        attempt: int,
        lane: str = INTERACTIVE_LANE,
    ) -> None:
        """Route one delivered message from `lane`'s stream; the caller reserved a slot for it."""
        try:
            request = decode_entry(fields)
        except (TypeError, ValueError, KeyError) as exc:
            self.inflight.unreserve(1)
            self._malformed(stream_id, fields or {}, attempt, exc, lane)
            return
        params: SamplingParams | PoolingParams | None = None
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
        elif request.lora is not None and request.lora not in self.served_loras():
            error = lora_not_served(self.model, request.lora)
        else:
            try:
                _check_prompt(request.prompt_token_ids)
                _check_priority(request.priority)
                if request.pooling is not None:
                    params = pooling_params_from_wire(request.pooling)
                    if self.classifier and params.task != "classify":
                        # An API of the release before knows no classifiers and would
                        # read the labels' probabilities as an embedding.
                        raise SamplingParamError(
                            "model",
                            "this model is a classifier: it answers /classify, and /score "
                            "and /rerank with one label; an API that asks it for embeddings "
                            "is of an older release",
                        )
                    if self.reads_token_types and params.segment_start is None:
                        # An API of the release before sends a pair as one text (every
                        # token type 0): a score, but not the one this model was trained
                        # to give.
                        raise SamplingParamError(
                            "segment_start",
                            "this classifier reads a pair's token types and the request "
                            "does not say where its second text starts: an API that "
                            "leaves them out is of an older release",
                        )
                else:
                    params = sampling_params_from_wire(request.sampling)
            except SamplingParamError as exc:
                error = bad_request(exc)
        ticket = Ticket(stream_id, request, attempt, params, lane=lane)
        # Held before any slow preparation: the janitor reclaims this worker's own pending
        # entries that it does not hold, so an entry must not sit unheld while a big
        # grammar compiles.
        if not self.inflight.admit(ticket):
            held = self.inflight.get(request.id)
            if held is not None and (held.lane, held.stream_id) == (lane, stream_id):
                return  # the same entry delivered twice: it is being served here already
            error = ErrorInfo(
                message=f"request id {request.id!r} is already being served",
                type="invalid_request_error",
                param="id",
                status=400,
            )
        elif error is None and isinstance(params, SamplingParams) and self.prepare is not None:
            try:
                self.prepare(params)
            except SamplingParamError as exc:
                error = bad_request(exc)
        if error is not None:
            self.publisher.put(Failed(ticket, error))
        else:
            self.work.put(ticket)

    def _malformed(
        self, stream_id: str, fields: dict[str, str], attempt: int, exc: Exception, lane: str
    ) -> None:
        """No reply address to answer: keep it for operators and take it off the stream."""
        stream = self.streams[lane]
        logger.error("undecodable message %s on %s: %s", stream_id, stream, exc)
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
                lane,
            )
            self.client.xack(stream, WORKER_GROUP, stream_id)
            self.client.xdel(stream, stream_id)
        except redis.RedisError as err:
            logger.warning("could not dead-letter %s (%s); a janitor will retry", stream_id, err)


def _check_prompt(tokens: object) -> None:
    """Types only (cheap); ranges and length are the engine's to judge."""
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise SamplingParamError("prompt", "must be a list of token ids")


def _check_priority(priority: object) -> None:
    """An integer, or the scheduler's ordering would fail inside the engine step."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise SamplingParamError("priority", "must be an integer")


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
