"""The engine thread: the only thread that touches the LLMEngine, and it never waits on Redis.

Each turn: admit what intake queued, apply aborts (an aborted request's KV
blocks are free before the next step), then `step()` and hand the outputs to
the publisher's queue. When there is no work it blocks briefly on the intake
queue instead of spinning. A failing step fails every request in the engine
with a 500 (no request is left hanging) and the loop carries on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from conveyor.bus import BATCH_LANE
from conveyor.interrupt_request import InterruptRequest
from conveyor.metrics import ITERATION_TOKENS, WorkerMetrics
from conveyor.protocol import ErrorInfo
from engine.llm_engine import LLMEngine
from workers.inflight import Inflight, Ticket
from workers.intake import bad_request, engine_priority, lora_not_served
from workers.interrupt_book import InterruptBook
from workers.pause_control import PauseControl, model_paused
from workers.publisher import Aborted, Failed, Publisher, Released, StepOutputs
from workers.sleep_control import SleepControl, model_sleeping
from workers.stats_logger import StatsLogger

logger = logging.getLogger(__name__)

_IDLE_WAIT = 0.05
# How often the loop looks for requests past their deadline, and how far past it one
# may run: the API ends its client's wait at the deadline and aborts; this catches the
# requests whose API died first, without cutting a live one short on a clock skew.
_DEADLINE_CHECK_EVERY = 0.5
_DEADLINE_GRACE = 1.0


class EngineBroken(RuntimeError):
    """The engine still holds requests after we failed and aborted them all."""


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        inflight: Inflight,
        publisher: Publisher,
        metrics: WorkerMetrics,
        work: queue.Queue[Ticket],
        sleep: SleepControl,
        pause: PauseControl,
        interrupts: InterruptBook,
        stats_log: StatsLogger | None = None,
    ) -> None:
        self.engine = engine
        # Sleep mode (POST /sleep, /wake_up): what the engine is asked to be, and when.
        self.sleep = sleep
        # POST /pause, /resume: whether requests wait, and whether the engine steps.
        self.pause = pause
        self.stats_log = stats_log
        self.inflight = inflight
        self.publisher = publisher
        self.metrics = metrics
        self.work = work
        self.aborts: queue.Queue[str] = queue.Queue()
        # POST /abort_requests: the calls heard, and what they asked to end.
        self.interrupt_calls: queue.Queue[InterruptRequest] = queue.Queue()
        self.interrupts = interrupts
        self.tasks: queue.Queue[Callable[[LLMEngine], None]] = queue.Queue()
        self._running: dict[str, Ticket] = {}  # in the engine, not yet finished
        # Aborts that arrived before their request reached the engine (or after it
        # finished there but before the publisher acked it).
        self._early_aborts: set[str] = set()
        self._sampled_counts = (0, 0)  # (running, waiting) at the last sample
        self._deadlines_checked_at = 0.0  # monotonic

    def abort(self, request_id: str) -> None:
        """Thread-safe: ask the loop to drop a request (the abort listener calls this)."""
        self.aborts.put(request_id)

    def interrupt(self, request: InterruptRequest) -> None:
        """Thread-safe: end the requests a `POST /abort_requests` call names (the abort
        listener calls this)."""
        self.interrupt_calls.put(request)

    def call_soon(self, task: Callable[[LLMEngine], None]) -> None:
        """Thread-safe: run `task(engine)` on the engine thread between two steps (it must
        handle its own errors)."""
        self.tasks.put(task)

    def run(self, intake_closed: threading.Event, drain_seconds: Callable[[], float]) -> None:
        """Serve until intake is closed and everything admitted has finished (or the grace,
        `drain_seconds()` read when intake closes, ends)."""
        self.engine.on_scheduled = self._sample_if_moved
        try:
            self._serve(intake_closed, drain_seconds)
        finally:
            self.engine.on_scheduled = None

    def _serve(self, intake_closed: threading.Event, drain_seconds: Callable[[], float]) -> None:
        drain_deadline: float | None = None
        while True:
            changed = self._run_tasks()
            if self.sleep.converge(self._end_all_for_sleep, frozen=self.pause.freezes):
                self._sample_stats()  # the metrics' sleep state, in the beat announcing it
                self.sleep.announce()
                changed = True
            if self.pause.converge(self._interrupt_all):
                self.pause.announce()
                changed = True
            if not self.pause.holds:
                changed |= self._admit_queued()
            changed |= self._apply_aborts()
            changed |= self._apply_interrupts()
            changed |= self._expire_overdue()
            unfinished = self.engine.has_unfinished()
            if unfinished and not self.pause.freezes:
                self._step()
                changed = True
            elif intake_closed.is_set() and self.work.empty() and not unfinished:
                break
            elif intake_closed.is_set() and self.pause.holds:
                # Stopping while paused: nothing held can move before a /resume, so what is
                # left goes back to the stream now rather than at the drain grace's end.
                self._release_all("the model is paused")
                break
            elif self.pause.holds:
                time.sleep(_IDLE_WAIT)  # until /resume (or a drain's end)
            else:
                try:
                    self._admit(self.work.get(timeout=_IDLE_WAIT))
                    changed = True
                except queue.Empty:
                    pass
            if changed or (self.stats_log is not None and self.stats_log.due()):
                self._sample_stats()
            if intake_closed.is_set():
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + drain_seconds()
                elif time.monotonic() > drain_deadline:
                    self._release_all()
                    break
        self._sample_stats()

    def _run_tasks(self) -> bool:
        ran = False
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return ran
            try:
                task(self.engine)
            except Exception:  # a task's bug must not stop the serving loop
                logger.exception("an engine task failed")
            ran = True

    # --- admission and aborts ---------------------------------------------------------

    def _admit_queued(self) -> bool:
        admitted = False
        while True:
            try:
                ticket = self.work.get_nowait()
            except queue.Empty:
                return admitted
            self._admit(ticket)
            admitted = True

    def _admit(self, ticket: Ticket) -> None:
        request = ticket.request
        rid = request.id
        if rid in self._early_aborts:
            self._early_aborts.discard(rid)
            self.publisher.put(Aborted(ticket))
            return
        assert ticket.params is not None  # intake only queues validated tickets
        if self.sleep.refuses:
            self.publisher.put(Failed(ticket, model_sleeping(self.engine.model_name)))
            return
        if request.lora is not None and request.lora not in self.engine.lora_names:
            # Unloaded since intake checked it.
            self.publisher.put(
                Failed(ticket, lora_not_served(self.engine.model_name, request.lora))
            )
            return
        try:
            self.engine.add_request(
                rid,
                request.prompt_token_ids,
                ticket.params,
                priority=engine_priority(request.priority, ticket.lane),
                arrival_time=request.arrival or ticket.received,
                lora=request.lora,
                cache_salt=request.cache_salt,
            )
        except ValueError as exc:
            self.publisher.put(Failed(ticket, bad_request(exc)))
            return
        except Exception:
            logger.exception("engine.add_request failed for %s", rid)
            self.publisher.put(Failed(ticket, _internal_error()))
            return
        self._running[rid] = ticket
        if self.interrupts.covers(ticket):
            # Queued when POST /abort_requests came: answered now, as vLLM answers a
            # request aborted before it was scheduled (finish_reason "abort", no text).
            self._end_with_what_they_have([ticket], _interrupted(self.engine.model_name))

    def _apply_aborts(self) -> bool:
        aborted = False
        while True:
            try:
                rid = self.aborts.get_nowait()
            except queue.Empty:
                break
            ticket = self._running.pop(rid, None)
            if ticket is None:
                self._early_aborts.add(rid)
                continue
            self.engine.abort(rid)
            self.publisher.put(Aborted(ticket))
            aborted = True
        if self._early_aborts:
            # Forget ids this worker no longer holds (finished, or never admitted here).
            self._early_aborts = {r for r in self._early_aborts if self.inflight.get(r)}
        return aborted

    def _apply_interrupts(self) -> bool:
        """POST /abort_requests: end the requests running here (frozen by a pause
        included) that a new call covers, each with the text it has. Those not admitted
        yet are ended as they are admitted (`_admit`): a paused model's, on /resume."""
        heard = []
        while True:
            try:
                heard.append(self.interrupt_calls.get_nowait())
            except queue.Empty:
                break
        if not heard:
            return False
        self.interrupts.add(heard)  # at once: a reconnect replays every recent call
        covered = [ticket for ticket in self._running.values() if self.interrupts.covers(ticket)]
        if covered:
            logger.info("ending %d requests: POST /abort_requests", len(covered))
            self._end_with_what_they_have(covered, _interrupted(self.engine.model_name))
        return True

    def _expire_overdue(self) -> bool:
        """End requests past their deadline: no generation outlives it, even when the API
        that would have aborted it is gone (killed, or cut off from Redis)."""
        now = time.monotonic()
        if now - self._deadlines_checked_at < _DEADLINE_CHECK_EVERY:
            return False
        self._deadlines_checked_at = now
        cutoff = time.time() - _DEADLINE_GRACE
        overdue = [
            ticket
            for ticket in self._running.values()
            if ticket.request.deadline is not None and ticket.request.deadline < cutoff
        ]
        for ticket in overdue:
            del self._running[ticket.request_id]
            self.engine.abort(ticket.request_id)
            self.publisher.put(Failed(ticket, _past_deadline(ticket.request.deadline)))
        return bool(overdue)

    # --- the step ---------------------------------------------------------------------

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception:
            logger.exception(
                "engine step failed; failing its %d in-flight requests", len(self._running)
            )
            self._fail_all()
            return
        if self.engine.last_step_tokens:
            self.metrics.observe(ITERATION_TOKENS, self.engine.last_step_tokens)
        if not outputs:
            return
        now = time.time()
        pairs = []
        for out in outputs:
            ticket = (
                self._running.pop(out.request_id, None)
                if out.finished
                else self._running.get(out.request_id)
            )
            if ticket is not None:
                pairs.append((ticket, out))
        self.publisher.put(StepOutputs(pairs, now))

    def _fail_all(self, error: ErrorInfo | None = None) -> None:
        for rid, ticket in self._running.items():
            try:
                self.engine.abort(rid)
            except Exception:
                logger.exception("engine.abort(%s) failed while failing every request", rid)
            self.publisher.put(Failed(ticket, error or _internal_error()))
        self._running.clear()
        if self.engine.has_unfinished():
            raise EngineBroken("the engine still holds requests after failing them all")

    def _end_all_for_sleep(self) -> None:
        """POST /sleep with mode abort: every request held ends with a 503 now."""
        if self._running:
            logger.info("ending %d requests: the model goes to sleep", len(self._running))
        self._fail_all(model_sleeping(self.engine.model_name, running=True))

    def _interrupt_all(self) -> None:
        """POST /pause with mode abort: every request held ends now, each with the text it
        has and finish_reason "abort" (as vLLM answers them). A batch line, and a request
        with no partial answer to give, gets a 503 instead: the batch worker waits that
        out and sends the line again, to run whole after /resume."""
        if self._running:
            logger.info("ending %d requests: the model is paused", len(self._running))
        paused = model_paused(self.engine.model_name)
        lines = [ticket for ticket in self._running.values() if ticket.lane == BATCH_LANE]
        for ticket in lines:
            del self._running[ticket.request_id]
            try:
                self.engine.abort(ticket.request_id)
            except Exception:
                logger.exception("engine.abort(%s) failed while pausing", ticket.request_id)
            self.publisher.put(Failed(ticket, paused))
        self._end_with_what_they_have(list(self._running.values()), paused)

    def _end_with_what_they_have(self, tickets: list[Ticket], no_answer: ErrorInfo) -> None:
        """End running requests now: each choice answered with the text it has and
        finish_reason "abort"; a request with no such answer (a beam search, an embedding)
        gets `no_answer`."""
        pairs = []
        for ticket in tickets:
            rid = ticket.request_id
            del self._running[rid]
            out = None
            try:
                out = self.engine.interrupt(rid)
            except Exception:
                logger.exception("ending %s with its partial answer failed", rid)
                try:
                    self.engine.abort(rid)
                except Exception:
                    logger.exception("engine.abort(%s) failed too", rid)
            if out is None:
                self.publisher.put(Failed(ticket, no_answer))
            else:
                pairs.append((ticket, out))
        if pairs:
            self.publisher.put(StepOutputs(pairs, time.time()))

    def _release_all(self, why: str = "drain grace over") -> None:
        """Drain grace is over (or the model is paused): drop what is left, unacked, for
        another worker to rerun."""
        left = list(self._running.values())
        for rid in self._running:
            self.engine.abort(rid)
        self._running.clear()
        while True:
            try:
                left.append(self.work.get_nowait())
            except queue.Empty:
                break
        for ticket in left:
            self.publisher.put(Released(ticket))
        if left:
            logger.warning(
                "%s: left %d unfinished requests pending for other workers", why, len(left)
            )

    def _sample_if_moved(self) -> None:
        """Before the forward pass: a request the scheduler just took from the queue counts
        as running for the whole step, as vLLM counts it once scheduled (after the step is
        too late for a prefill that takes seconds)."""
        scheduler = self.engine.scheduler
        if (scheduler.num_running, scheduler.num_waiting) != self._sampled_counts:
            self._sample_stats()

    def _sample_stats(self) -> None:
        self.metrics.set_sleep_state(bool(self.engine.asleep), self.engine.sleep_level)
        s = self.engine.stats()
        self._sampled_counts = (s.num_running, s.num_waiting)
        if self.stats_log is not None:
            self.stats_log.observe(s)
        self.metrics.set_engine_state(
            s.num_running,
            s.num_waiting,
            s.kv_cache_usage,
            s.num_preemptions,
            s.spec_draft_tokens,
            s.spec_accepted_tokens,
            lora=(
                (s.lora_max_loaded, s.lora_waiting or (), s.lora_running or ())
                if s.lora_running is not None
                else None
            ),
        )


def _past_deadline(deadline: float) -> ErrorInfo:
    return ErrorInfo(
        message=(
            f"the request ran {time.time() - deadline:.1f} s past its deadline "
            "(--request-timeout) and was stopped"
        ),
        type="timeout",
        code="timeout",
        status=504,
    )


def _interrupted(model: str) -> ErrorInfo:
    """The answer to a request POST /abort_requests ended that has no partial answer to
    give (a beam search, an embedding)."""
    return ErrorInfo(
        message=(
            f"This request to `{model}` was aborted on the server (POST /abort_requests) "
            "before it finished"
        ),
        code="request_aborted",
        status=503,
    )


def _internal_error() -> ErrorInfo:
    return ErrorInfo(
        message="internal error in the engine while serving this request",
        type="server_error",
        status=500,
    )
