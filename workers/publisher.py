"""The publisher thread: engine outputs and failures out to Redis, many per round trip.

Everything a worker tells an API process goes through this one thread and
its one queue, so a request's messages leave in order (its error can never
overtake its tokens) and the engine loop only ever does `queue.put`. Each
round drains whatever is queued into one pipeline: the PUBLISHes, and for
finished requests the stored result, XACK and XDEL (a finished request leaves
the stream, so the stream holds only queued and in-flight work). A slot in
`Inflight` is freed only after that pipeline ran, which is what keeps the
worker's pending count within its capacity.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass

import redis

from conveyor import metrics as m
from conveyor.bus import LANES, WORKER_GROUP, BusNames
from conveyor.metrics import WorkerMetrics
from conveyor.protocol import ErrorInfo
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from workers.inflight import Inflight, Ticket
from workers.replies import ReplyBuilder

logger = logging.getLogger(__name__)

_MAX_BATCH = 512
_RETRY_SLEEP = 0.5
# After this long without Redis a round is dropped: its requests stay pending (never
# acked), so a janitor reclaims and reruns them once Redis is back; clients never hang.
_RETRY_FOR = 30.0


@dataclass(frozen=True)
class StepOutputs:
    """One engine step's outputs, paired with their tickets, and when the step ended."""

    outputs: list[tuple[Ticket, RequestOutput]]
    time: float


@dataclass(frozen=True)
class Failed:
    """The request ends with this error: reply, store it as the result, XACK."""

    ticket: Ticket
    error: ErrorInfo


@dataclass(frozen=True)
class Aborted:
    """The client went away and the engine dropped the request: XACK, nothing stored."""

    ticket: Ticket


@dataclass(frozen=True)
class Released:
    """Given up at shutdown without an ACK, so another worker's janitor reclaims it (a
    stream that already sent tokens fails instead: its client cannot take a rerun)."""

    ticket: Ticket


Event = StepOutputs | Failed | Aborted | Released

# A released stream that had sent tokens ends with this (others are rerun elsewhere).
_STOPPED_MID_STREAM = ErrorInfo(
    message=(
        "the worker serving this stream stopped before it finished (its drain timeout ran "
        "out); retry the request"
    ),
    code="worker_stopped",
    status=503,
)


class Publisher:
    """Consumes `events` until `close()`; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        model: str,
        instance: str,
        inflight: Inflight,
        metrics: WorkerMetrics,
        result_ttl: float,
    ) -> None:
        self.client = client
        self.names = names
        self.streams = {lane: names.requests(model, lane) for lane in LANES}
        self.instance = instance
        self.inflight = inflight
        self.metrics = metrics
        self.result_ttl_ms = max(1, int(result_ttl * 1000))
        self.events: queue.Queue[Event | None] = queue.Queue()
        self._builders: dict[str, ReplyBuilder] = {}
        self.retry_for = _RETRY_FOR  # 0 once no Redis is coming back (the supervisor died)

    def put(self, event: Event) -> None:
        self.events.put(event)

    def close(self) -> None:
        """Publish what is queued, then stop the thread."""
        self.events.put(None)

    def run(self) -> None:
        closing = False
        while not closing:
            batch: list[Event] = []
            item = self.events.get()
            while True:
                if item is None:
                    closing = True
                    break
                batch.append(item)
                if len(batch) >= _MAX_BATCH:
                    break
                try:
                    item = self.events.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._publish(batch)

    # --- one round trip ---------------------------------------------------------------

    def _publish(self, batch: list[Event]) -> None:
        pipe = self.client.pipeline(transaction=False)
        done: list[Ticket] = []
        for event in batch:
            if isinstance(event, StepOutputs):
                for ticket, out in event.outputs:
                    if self._outputs(pipe, ticket, out, event.time):
                        done.append(ticket)
            elif isinstance(event, Failed):
                self._failed(pipe, event)
                done.append(event.ticket)
            elif isinstance(event, Aborted):
                self._builders.pop(event.ticket.request_id, None)
                self.metrics.request_finished("abort")
                self._ack(pipe, event.ticket)
                done.append(event.ticket)
            elif self._streamed_output(event.ticket):
                # Its client already read tokens, which no rerun elsewhere can continue:
                # tell it now rather than leave it to notice the missing heartbeat.
                self._failed(pipe, Failed(event.ticket, _STOPPED_MID_STREAM))
                done.append(event.ticket)
            else:
                self._builders.pop(event.ticket.request_id, None)
                done.append(event.ticket)
        if len(pipe):
            self._execute(pipe)
        for ticket in done:
            self.inflight.remove(ticket)

    def _streamed_output(self, ticket: Ticket) -> bool:
        builder = self._builders.get(ticket.request_id)
        return (
            builder is not None
            and builder.ticket is ticket
            and builder.streaming
            and any(c.text or c.token_ids for c in builder.choices.values())
        )

    def _execute(self, pipe: redis.client.Pipeline) -> None:
        """Run the round trip, retrying for a while if Redis is away."""
        started = time.monotonic()
        while True:
            try:
                pipe.execute()
                return
            except redis.RedisError as exc:
                if time.monotonic() - started >= self.retry_for:  # read each time: it may drop
                    logger.error("dropping %d reply commands: no Redis (%s)", len(pipe), exc)
                    return
                # A retry may repeat a PUBLISH; the API drops duplicates by seq.
                logger.warning("publishing %d commands failed (%s); retrying", len(pipe), exc)
                time.sleep(_RETRY_SLEEP)

    def _outputs(
        self, pipe: redis.client.Pipeline, ticket: Ticket, out: RequestOutput, now: float
    ) -> bool:
        """Queue one request's delta; True when the request finished."""
        builder = self._builders.get(ticket.request_id)
        if builder is None:
            builder = self._builders[ticket.request_id] = ReplyBuilder(ticket, self.instance)
        message = builder.absorb(out)
        self._observe(builder, out, now)
        channel = self.names.reply(ticket.request.reply_to)
        if not out.finished:
            if message is not None:
                pipe.publish(channel, message.encode())
            return False
        del self._builders[ticket.request_id]
        result = builder.result()
        # Stored before the final message goes out, so an API that sees the end (or a
        # gap) can always read the whole result.
        pipe.set(self.names.result(ticket.request_id), result.encode(), px=self.result_ttl_ms)
        pipe.publish(channel, (message or result).encode())
        self._ack(pipe, ticket)
        return True

    def _failed(self, pipe: redis.client.Pipeline, event: Failed) -> None:
        ticket, error = event.ticket, event.error
        builder = self._builders.get(ticket.request_id)
        if builder is not None and builder.ticket is ticket:
            del self._builders[ticket.request_id]
        else:  # failed before any output, or a duplicate id that must not disturb the original
            builder = ReplyBuilder(ticket, self.instance)
        message = builder.error(error)
        logger.warning(
            "request %s failed (%d %s%s): %s",
            ticket.request_id,
            error.status,
            error.type,
            f", param {error.param}" if error.param else "",
            error.message,
        )
        encoded = message.encode()
        if self.inflight.get(ticket.request_id) is ticket:
            # Stored too: an API that missed the message must find an answer, not wait.
            pipe.set(self.names.result(ticket.request_id), encoded, px=self.result_ttl_ms)
        pipe.publish(self.names.reply(ticket.request.reply_to), encoded)
        self._ack(pipe, ticket)

    def _ack(self, pipe: redis.client.Pipeline, ticket: Ticket) -> None:
        stream = self.streams[ticket.lane]  # the lane's stream the entry was read from
        pipe.xack(stream, WORKER_GROUP, ticket.stream_id)
        pipe.xdel(stream, ticket.stream_id)

    def _observe_finished(self, builder: ReplyBuilder, out: RequestOutput, finished: float) -> None:
        """vLLM's per-request histograms of a finished request: its phases and its sizes."""
        metrics, times = self.metrics, out.times
        if times.scheduled is not None:
            metrics.observe(m.REQUEST_INFERENCE_TIME, finished - times.scheduled)
            if times.first_token is not None:
                metrics.observe(m.REQUEST_PREFILL_TIME, times.first_token - times.scheduled)
        if times.first_token is not None:
            metrics.observe(m.REQUEST_DECODE_TIME, finished - times.first_token)
        metrics.observe(m.REQUEST_PROMPT_TOKENS, out.num_prompt_tokens)
        lengths = [c.num_output_tokens for c in builder.choices.values()]
        metrics.observe(m.REQUEST_GENERATION_TOKENS, sum(lengths))
        metrics.observe(m.REQUEST_MAX_NUM_GENERATION_TOKENS, max(lengths, default=0))
        params = builder.ticket.params
        if isinstance(params, SamplingParams):  # not an embedding
            metrics.observe(m.REQUEST_PARAMS_N, params.n)
            if params.max_tokens is not None:
                metrics.observe(m.REQUEST_PARAMS_MAX_TOKENS, params.max_tokens)

    def _observe(self, builder: ReplyBuilder, out: RequestOutput, now: float) -> None:
        """vLLM's per-request metrics, from the engine's time marks (epoch seconds)."""
        new_tokens = sum(len(o.token_ids) for o in out.outputs)
        metrics = self.metrics
        times = out.times
        # A request a pause (POST /pause) ended before its first token: no prompt was
        # processed for it, as vLLM counts an aborted one.
        interrupted = times.first_token is None and any(
            o.finish_reason == "abort" for o in out.outputs
        )
        if builder.choice_token_times:  # not the request's first output
            metrics.add_tokens(generation=new_tokens)
        elif not interrupted:  # the request's first output
            metrics.add_tokens(prompt=out.num_prompt_tokens, generation=new_tokens)
            metrics.add_prefix_cache(out.num_prompt_tokens, out.num_cached_tokens)
            if times.scheduled is not None:
                metrics.observe(m.REQUEST_QUEUE_TIME, times.scheduled - times.arrival)
            if times.first_token is not None:
                metrics.observe(m.TIME_TO_FIRST_TOKEN, times.first_token - times.arrival)
        # One sample per choice that moved since its previous token (n > 1: each choice is
        # a sequence of its own, as vLLM's per-choice child requests count them).
        for output in out.outputs:
            if output.token_ids:
                previous = builder.choice_token_times.get(output.index)
                if previous is not None:
                    metrics.observe(m.INTER_TOKEN_LATENCY, now - previous)
                builder.choice_token_times[output.index] = now
        if out.finished:
            finished = times.finished if times.finished is not None else now
            metrics.observe(m.E2E_REQUEST_LATENCY, finished - times.arrival)
            self._observe_finished(builder, out, finished)
            reasons = {c.finish_reason for c in builder.choices.values()}
            # n > 1: one label per request; a choice cut by a pause (POST /pause) makes it
            # 'abort', else one cut by length makes it 'length'.
            metrics.request_finished(
                "abort" if "abort" in reasons else "length" if "length" in reasons else "stop"
            )
