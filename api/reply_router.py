"""Replies from workers, routed to the request that waits for them.

Each API process subscribes once to its own channel (`names.reply(instance)`)
and hands every ReplyMessage to a per-request asyncio queue: one subscription
per request would cost a Redis connection each. Pub/sub is fire-and-forget, so
a `ReplyReader` checks what arrives:

- `seq` must increase by one from FIRST_SEQ. A gap means a lost message: a
  non-streaming request recovers the whole answer from `names.result(id)`
  (which the worker writes when it finishes); a stream cannot take back what it
  sent, so it ends with an error.
- A higher `attempt` means the request was re-delivered after its worker died:
  a non-streaming request starts over; a stream that already sent tokens ends
  with an error rather than repeat text.
- A reply that never comes ends with a timeout at the request's deadline, and
  a long silence (or a reconnect of the subscription) makes the reader look
  for a stored result, so a lost final message cannot hang a request.
- A silence also makes the reader ask whether anything can still answer
  (`ReplyRouter.lost`): a request whose queue entry and result are gone while
  no live worker holds it (Redis restarted empty) ends at the second such
  check, and a stream that already sent tokens ends once its worker's
  heartbeat has been gone `WORKER_LOSS_GRACE` (it could only be restarted,
  which a stream refuses). Without Redis for `REDIS_LOSS_GRACE` seconds, a
  request ends with a 503 instead of waiting for its deadline. A request that
  no live worker holds while its model has no live worker at all ends with a
  503 `no_worker` once that has lasted the router's `worker_loss_timeout`
  (a crashed worker restarted sooner resumes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.errors import ApiError
from api.output_log import OutputLog
from api.quiet_futures import retrieve_error
from conveyor.bus import WORKER_GROUP, BusNames
from conveyor.protocol import ErrorInfo, ReplyMessage

logger = logging.getLogger(__name__)

FIRST_SEQ = 0  # the `seq` of a request's first message in every attempt
# How long a request waits for an unreachable Redis before it ends with a 503: as long
# as a worker keeps its replies for a Redis that comes back (workers/publisher.py).
REDIS_LOSS_GRACE = 30.0
# How long a stream that already sent tokens waits for its worker's heartbeat to come
# back (a paused process) before it ends: only a restart elsewhere, which a stream
# refuses, could finish it otherwise. A non-streamed request waits for that restart.
WORKER_LOSS_GRACE = 10.0


@dataclass(frozen=True)
class Restart:
    """Everything accumulated so far is void; output starts again from the next message."""

    reason: str


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_RESYNC = _Signal("resync")  # the subscription reconnected: messages may have been lost
_CLOSED = _Signal("closed")  # the router stopped
_SILENCE = _Signal("silence")  # nothing arrived for a while
_WORKER_GONE = _Signal("worker gone")  # the answering worker's heartbeat expired
# No live worker holds the request and none serves its model: only a restart can answer.
_UNSERVED = _Signal("unserved")


@dataclass(frozen=True)
class _Ended:
    """This API ended the request (`ReplyRouter.end`): its reader raises `error`."""

    error: ApiError


_QueueItem = ReplyMessage | _Signal | _Ended
T = TypeVar("T")


class _Unreachable(Exception):
    """Redis gave no answer in time (not yet for REDIS_LOSS_GRACE)."""


def worker_error(info: ErrorInfo) -> ApiError:
    return ApiError(info.status, info.message, param=info.param, code=info.code, type=info.type)


class ReplyRouter:
    """The one subscription of this API process and the queues of its in-flight requests."""

    def __init__(
        self,
        redis: Redis,
        names: BusNames,
        instance: str,
        *,
        silence_check: float = 5.0,
        result_poll: float = 0.05,
        model_served: Callable[[str], Awaitable[bool]] | None = None,
        worker_loss_timeout: float = float("inf"),
        log_outputs: bool = False,
        max_log_len: int | None = None,
    ) -> None:
        """`model_served(model)` says whether a live worker serves a model now (the
        catalog's); a request that none could run ends `worker_loss_timeout` seconds on.
        Without it a request waits for its deadline instead. `log_outputs`: each
        finished request's output is logged (api/output_log.py)."""
        self.redis = redis
        self.names = names
        self.instance = instance
        self.channel = names.reply(instance)
        self.silence_check = silence_check
        self.result_poll = result_poll
        self.model_served = model_served
        self.worker_loss_timeout = worker_loss_timeout
        self.log_outputs = log_outputs
        self.max_log_len = max_log_len
        self._queues: dict[str, asyncio.Queue[_QueueItem]] = {}
        # Request id -> (stream, entry id) until the request ends: a worker that finishes
        # it deletes the entry itself; an abort deletes it here.
        self._entries: dict[str, tuple[str, str]] = {}
        # Where each in-flight request was queued, kept until it ends: (model, stream, id).
        self._placed: dict[str, tuple[str, str, str]] = {}
        self._pubsub = redis.pubsub()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, timeout: float = 10.0) -> None:
        """Subscribe and wait for Redis to confirm, so no reply can precede the subscription."""
        await self._pubsub.subscribe(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self._pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "subscribe":
                break
        else:
            raise TimeoutError(f"Redis did not confirm the subscription to {self.channel}")
        self._task = asyncio.create_task(self._run(), name="reply-router")

    async def stop(self) -> None:
        if self._task is not None:
            # Let the loop notice and return: cancelling a blocked redis-py read can hang.
            self._stopping = True
            done, _ = await asyncio.wait({self._task}, timeout=2.0)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self._broadcast(_CLOSED)
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        with contextlib.suppress(RedisConnectionError, OSError):
            await self._pubsub.aclose()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                message = await self._pubsub.get_message(timeout=0.25)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("reply subscription lost (%s); reconnecting", exc)
                self._broadcast(_RESYNC)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if message is None:
                continue
            if message["type"] == "message":
                self._route(message["data"])
            elif message["type"] == "subscribe":
                # redis-py re-subscribed after a reconnect; anything sent meanwhile is gone.
                self._broadcast(_RESYNC)

    def _route(self, raw: str | bytes) -> None:
        try:
            message = ReplyMessage.decode(raw)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("dropping an undecodable reply: %s", exc)
            return
        if message.finished:
            # The worker acked and deleted the stream entry with this message.
            self._entries.pop(message.id, None)
        queue = self._queues.get(message.id)
        if queue is not None:
            queue.put_nowait(message)
        # else: the request already ended (finished, timed out or disconnected)

    def _broadcast(self, signal: _Signal) -> None:
        for queue in self._queues.values():
            queue.put_nowait(signal)

    def open(self, request_id: str, deadline: float, *, streaming: bool) -> ReplyReader:
        """Start receiving a request's replies; call before the request is queued."""
        if request_id in self._queues:
            raise RuntimeError(f"request id {request_id} is already in flight")
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._queues[request_id] = queue
        return ReplyReader(self, request_id, queue, deadline, streaming=streaming)

    def _close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._placed.pop(request_id, None)

    def queued(self, request_id: str, stream: str, entry_id: str, model: str = "") -> None:
        """Remember where a request waits, so an abort can pull it out of the queue and a
        silent request can be checked (`lost`)."""
        self._entries[request_id] = (stream, entry_id)
        if request_id in self._queues:
            self._placed[request_id] = (model, stream, entry_id)

    def end(self, request_id: str, error: ApiError) -> None:
        """End one in-flight request with `error` (its reader raises it; the request's
        route then aborts the generation, as for any request that did not finish)."""
        queue = self._queues.get(request_id)
        if queue is not None:
            queue.put_nowait(_Ended(error))

    def close_in_flight(self) -> None:
        """End every in-flight request with a 503 `shutting_down` (the drain is over)."""
        self._broadcast(_CLOSED)

    async def lost(self, reader: ReplyReader) -> ApiError | _Signal | None:
        """Why nothing will answer `reader`'s request any more; `_UNSERVED` when no live
        worker holds it and none serves its model (a restart may yet come);
        `_WORKER_GONE` when the worker that answered it has no heartbeat (it may be
        stopped, not dead); None while all is well. Raises RedisError when Redis cannot
        be asked."""
        placed = self._placed.get(reader.request_id)
        if placed is None:
            return None
        model, stream, entry_id = placed
        heartbeat = self.names.worker(model, reader.worker) if reader.worker else None
        # Shielded as a whole: a cancelled probe must not hand back a connection that is
        # still reading the pipeline's replies.
        probe = asyncio.ensure_future(
            self._probe(stream, entry_id, self.names.result(reader.request_id), heartbeat)
        )
        # A probe that outlives its cancelled caller (a hung Redis) fails on its own later:
        # its error was the caller's to see, and is not "never retrieved".
        probe.add_done_callback(retrieve_error)
        queued, has_result, worker_alive = await asyncio.shield(probe)
        if not queued and not has_result and not worker_alive:
            # A worker acks and deletes the entry only with the result stored, in one
            # round: neither is left and no live worker holds it (its first message says
            # which does), so Redis lost the request (restarted empty).
            return ApiError(
                503,
                "the request was lost by the queue (Redis restarted); retry the request",
                code="request_lost",
            )
        if not queued or worker_alive:
            return None
        if not await self._served(model) and not await self._held(model, stream, entry_id):
            return _UNSERVED
        return _WORKER_GONE if heartbeat is not None else None

    async def _served(self, model: str) -> bool:
        """Whether a live worker serves `model` (True when there is no way to ask, or the
        catalog's scan fails or is slow: only a sure "none" may end a request, and a
        scan's trouble is not the request's)."""
        if self.model_served is None:
            return True
        try:
            async with asyncio.timeout(self.silence_check / 2):
                return await self.model_served(model)
        except (RedisError, TimeoutError) as exc:
            logger.debug("could not ask whether %s has a live worker: %s", model, _cause(exc))
            return True

    async def _held(self, model: str, stream: str, entry_id: str) -> bool:
        """Whether a live worker has read the entry (its pending owner beats): one the
        catalog leaves out, draining, still runs what it read, perhaps not started yet
        (so no reply has named it)."""
        try:
            pending = await self.redis.xpending_range(stream, WORKER_GROUP, entry_id, entry_id, 1)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return False  # no worker ever read this stream (or Redis lost the group)
            raise
        if not pending:
            return False
        owner = pending[0]["consumer"]
        owner = owner.decode() if isinstance(owner, bytes) else str(owner)
        return bool(await self.redis.exists(self.names.worker(model, owner)))

    async def _probe(
        self, stream: str, entry_id: str, result: str, heartbeat: str | None
    ) -> tuple[bool, bool, bool]:
        """Whether the request's stream entry, its result and its worker's heartbeat exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, entry_id, entry_id, count=1)
            pipe.exists(result)
            if heartbeat is not None:
                pipe.exists(heartbeat)
            found = await pipe.execute()
        return bool(found[0]), bool(found[1]), heartbeat is not None and bool(found[2])

    @property
    def in_flight(self) -> int:
        return len(self._queues)

    async def abort(self, request_ids: Iterable[str]) -> None:
        """Tell workers these requests' clients are gone, so they free the sequences."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.publish(self.names.abort, request_id)
                entry = self._entries.pop(request_id, None)
                if entry is not None:
                    # Deleted so no worker generates for a client that is gone: one still
                    # queued is never read. Acked too, so one whose worker missed the
                    # abort above (pub/sub: a dead or hung worker) leaves that worker's
                    # pending list now: no janitor reclaims it to run it again, and the
                    # queue's `pending` count (/metrics, overload checks) holds no ghost.
                    stream, entry_id = entry
                    pipe.xack(stream, WORKER_GROUP, entry_id)
                    pipe.xdel(stream, entry_id)
            await pipe.execute()

    def abort_soon(self, request_ids: Iterable[str]) -> None:
        """`abort` from code that may be cancelled (a disconnected stream's cleanup)."""
        ids = list(request_ids)
        if not ids:
            return
        task = asyncio.get_running_loop().create_task(self._abort_logged(ids))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _abort_logged(self, request_ids: list[str]) -> None:
        try:
            await self.abort(request_ids)
        except RedisError as exc:
            # Redis is away: the workers' deadline check ends these requests instead.
            logger.warning("could not publish abort for %s (%s)", request_ids, exc)
        except Exception:
            logger.exception("could not publish abort for %s", request_ids)


class ReplyReader:
    """One request's replies in order: ReplyMessages, and Restart when output must start over."""

    def __init__(
        self,
        router: ReplyRouter,
        request_id: str,
        queue: asyncio.Queue[_QueueItem],
        deadline: float,
        *,
        streaming: bool,
    ) -> None:
        self.router = router
        self.request_id = request_id
        self.queue = queue
        self.deadline = deadline  # time.time() seconds, as in GenerateRequest.deadline
        self.streaming = streaming
        self.attempt = 1
        self.expected_seq = FIRST_SEQ
        self.sent_output = False
        self.finished = False
        self.closed = False
        # For the request log: when the first token reached this API, and the engine's timings.
        self.first_token_at: float | None = None
        self.worker_times: dict[str, float | None] | None = None
        # Set by the first reply of any kind: a worker is generating this request (a
        # background response then reads `in_progress` instead of `queued`).
        self.started = asyncio.Event()
        # The instance of the worker whose replies are being read ("" before the first;
        # a non-streamed request's worker sends a first message too when it starts).
        self.worker = ""
        # Since when Redis could not be asked whether the request is alive, since when
        # the answering worker has had no heartbeat, and since when no live worker could
        # run the request (monotonic).
        self._unreachable_since: float | None = None
        self._worker_gone_since: float | None = None
        self._unserved_since: float | None = None
        self._checked_at = time.monotonic()  # the first check waits a silence_check
        self._lost_seen = False  # the last check found the request lost
        self._output_log = OutputLog(request_id, router.max_log_len) if router.log_outputs else None

    def close(self) -> bool:
        """Stop receiving; True only for the call that actually closed it."""
        if self.closed:
            return False
        self.closed = True
        self.router._close(self.request_id)
        return True

    async def __aiter__(self) -> AsyncIterator[ReplyMessage | Restart]:
        try:
            async for item in self._items():
                yield item
        finally:
            self.router._close(self.request_id)

    async def _items(self) -> AsyncIterator[ReplyMessage | Restart]:
        while True:
            item = await self._next()
            if item is _CLOSED:
                raise _shutting_down()
            if isinstance(item, _Ended):
                raise item.error
            if isinstance(item, _Signal):
                try:
                    stored = await self._stored_result()
                except _Unreachable:
                    continue  # nothing else could be asked either; the grace bounds this
                if stored is None:
                    await self._check_alive()
                    continue
                if self.streaming and self.sent_output:
                    raise self._lost()
                # Nothing reached the client yet (or it is not streaming): the stored
                # result is the whole answer, e.g. when it was stored just before the
                # final message that is still in flight.
                yield self._restart("recovered from the stored result")
                yield self._finish(stored)
                return
            message = item
            if message.attempt < self.attempt:
                continue  # a late message from a worker presumed dead
            if message.attempt > self.attempt:
                if self.streaming and self.sent_output:
                    raise _worker_restarted()
                self.attempt = message.attempt
                self.expected_seq = FIRST_SEQ
                yield self._restart(f"attempt {message.attempt}")
            if message.seq < self.expected_seq:
                continue  # duplicate
            if message.seq > self.expected_seq:
                if self.streaming:
                    raise self._lost()
                stored = await self._poll_result()
                yield self._restart("recovered from the stored result")
                yield self._finish(stored)
                return
            self.expected_seq += 1
            self.worker = message.worker
            self.started.set()
            if message.error is not None:
                raise worker_error(message.error)
            if message.times is not None:
                self.worker_times = message.times
            if any(c.text or c.token_ids for c in message.choices):
                self.sent_output = True
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
            if message.finished:
                yield self._finish(message)
                return
            if self._output_log is not None:
                self._output_log.add(message)
            yield message

    def _restart(self, reason: str) -> Restart:
        if self._output_log is not None:
            self._output_log.reset()
        return Restart(reason)

    def _finish(self, message: ReplyMessage) -> ReplyMessage:
        # Also when the answer came from the stored result: its worker deleted the entry.
        self.router._entries.pop(self.request_id, None)
        if message.error is not None:
            raise worker_error(message.error)
        self.finished = True
        if self._output_log is not None:
            self._output_log.finish(message)
        return message

    async def _check_alive(self) -> None:
        """After a silence or a reconnect (at most every `silence_check` seconds): end the
        request now if nothing can answer it any more."""
        now = time.monotonic()
        if now - self._checked_at < self.router.silence_check:
            return
        self._checked_at = now
        try:
            lost = await self._ask_redis(self.router.lost(self))
        except _Unreachable:
            return
        if isinstance(lost, ApiError):
            # Only when two checks in a row say so: just after a Redis restart a live
            # worker's heartbeat may not be written again yet.
            if self._lost_seen:
                raise lost
            self._lost_seen = True
            return
        self._lost_seen = False
        if lost is _UNSERVED:
            if self._unserved_since is None:
                self._unserved_since = now
            if now - self._unserved_since >= self.router.worker_loss_timeout:
                placed = self.router._placed.get(self.request_id)
                raise _no_worker(placed[0] if placed else "", now - self._unserved_since)
        else:
            self._unserved_since = None
        if lost is not _WORKER_GONE and not (lost is _UNSERVED and self.worker):
            self._worker_gone_since = None
            return
        if self._worker_gone_since is None:
            self._worker_gone_since = now
        elif (
            self.streaming
            and self.sent_output
            and now - self._worker_gone_since >= WORKER_LOSS_GRACE
        ):
            raise _worker_restarted(restarted=False)

    def _lost(self) -> ApiError:
        return ApiError(
            502,
            "part of this stream was lost between the worker and the API; retry the request",
            code="reply_lost",
        )

    def _timeout(self) -> ApiError:
        return ApiError(504, "the request timed out waiting for a worker to answer", code="timeout")

    async def _next(self) -> _QueueItem:
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise self._timeout()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            async with asyncio.timeout(min(remaining, self.router.silence_check)):
                return await self.queue.get()
        except TimeoutError:
            if self.deadline - time.time() <= 0:
                raise self._timeout() from None
            return _SILENCE

    async def _ask_redis(self, call: Awaitable[T]) -> T:
        """`call`'s answer within a `silence_check`; raises _Unreachable when Redis gives
        none, and the request's 503 once it has given none for REDIS_LOSS_GRACE.

        Bounded so that a hung Redis (its read timeout is longer) costs the request no more
        than an unreachable one; shielded because redis-py 8 sends through
        asyncio.wait_for, which on Python 3.11 can swallow a cancellation (a departed
        client's) that lands mid-command, and a pipeline must not hand back a connection
        still reading its replies."""
        asked_at = time.monotonic()
        task = asyncio.ensure_future(call)
        task.add_done_callback(retrieve_error)  # a hung one fails after we stopped waiting
        try:
            async with asyncio.timeout(self.router.silence_check):
                answer = await asyncio.shield(task)
        except (RedisError, TimeoutError) as exc:
            if self._unreachable_since is None:
                self._unreachable_since = asked_at
            elif asked_at - self._unreachable_since >= REDIS_LOSS_GRACE:
                raise ApiError(
                    503,
                    f"the request queue (Redis) has been unreachable for "
                    f"{asked_at - self._unreachable_since:.0f} s ({_cause(exc)}); retry "
                    "the request",
                    code="queue_unavailable",
                    headers={"Retry-After": "5"},
                ) from None
            logger.debug("Redis did not answer for %s: %s", self.request_id, _cause(exc))
            raise _Unreachable from exc
        self._unreachable_since = None
        return answer

    async def _stored_result(self) -> ReplyMessage | None:
        """The worker's stored result; raises _Unreachable (see _ask_redis)."""
        raw = await self._ask_redis(
            self.router.redis.get(self.router.names.result(self.request_id))
        )
        if raw is None:
            return None
        try:
            return ReplyMessage.decode(raw)
        except (ValueError, TypeError, KeyError):
            logger.warning("undecodable stored result for %s", self.request_id)
            return None

    async def _poll_result(self) -> ReplyMessage:
        """Wait for the stored result; meanwhile an error reply still ends the request."""
        interval = self.router.result_poll
        while True:
            with contextlib.suppress(_Unreachable):  # waited out; the grace bounds it
                stored = await self._stored_result()
                if stored is not None:
                    return stored
            remaining = self.deadline - time.time()
            if remaining <= 0:
                raise self._timeout()
            try:
                async with asyncio.timeout(min(interval, remaining)):
                    item = await self.queue.get()
            except TimeoutError:
                interval = min(interval * 2, 1.0)
                await self._check_alive()
                continue
            if item is _CLOSED:
                raise _shutting_down()
            if not isinstance(item, ReplyMessage):
                await self._check_alive()
                continue
            if item.error is not None:
                raise worker_error(item.error)


def _shutting_down() -> ApiError:
    """The drain ended before the answer: another replica, or this one restarted, can
    take the request again (a non-streamed one: its client sees the header)."""
    return ApiError(
        503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "1"}
    )


def _worker_restarted(*, restarted: bool = True) -> ApiError:
    """A stream cannot take back what it sent: `restarted`, another worker began the
    request again; else its worker stopped answering (no other may exist yet)."""
    happened = (
        "the request was restarted on another worker"
        if restarted
        else f"its worker has sent no heartbeat for {WORKER_LOSS_GRACE:.0f} s"
    )
    return ApiError(
        503,
        f"this stream cannot go on: {happened}; retry the request",
        code="worker_restarted",
    )


def _no_worker(model: str, waited: float) -> ApiError:
    """No worker could run the request for the router's worker_loss_timeout: the model's
    workers are down (or draining), so the client is told to retry rather than wait out
    its deadline; the abort that follows pulls the request out of the queue."""
    return ApiError(
        503,
        f"the model `{model}` has had no live worker to run this request for "
        f"{waited:.0f} s; retry the request",
        code="no_worker",
        headers={"Retry-After": "5"},
    )


def _cause(exc: BaseException) -> str:
    """What went wrong, also for exceptions without a message (a bare TimeoutError)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer"
    return str(exc) or type(exc).__name__
