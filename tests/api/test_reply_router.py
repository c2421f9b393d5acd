"""ReplyReader rules in isolation: ordering, duplicates, stale attempts, cancellation."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.collect import collect
from api.errors import ApiError
from api.reply_router import FIRST_SEQ, ReplyReader, ReplyRouter, Restart
from conveyor.bus import WORKER_GROUP, BusNames
from conveyor.embedded_redis import EmbeddedRedis, free_port
from conveyor.protocol import ChoiceDelta, ErrorInfo, ReplyMessage, Usage


def message(seq: int, text: str, *, attempt: int = 1, finished: bool = False) -> ReplyMessage:
    return ReplyMessage(
        id="r1",
        seq=seq,
        choices=[ChoiceDelta(index=0, text=text, token_ids=[seq], finish_reason=None)],
        finished=finished,
        usage=Usage(3, seq + 1) if finished else None,
        attempt=attempt,
    )


def router() -> ReplyRouter:
    # Nothing here touches Redis: messages are routed by hand.
    return ReplyRouter(aioredis.Redis(), BusNames("unit"), "api-unit")


def test_duplicates_and_stale_attempts_are_ignored() -> None:
    async def run() -> str:
        replies = router()
        reader = replies.open("r1", time.time() + 5, streaming=False)
        for item in (
            message(FIRST_SEQ, "a"),
            message(FIRST_SEQ, "a"),  # duplicate
            message(FIRST_SEQ + 1, "b"),
            message(FIRST_SEQ + 2, "c", finished=True),
        ):
            replies._route(item.encode())
        output = await collect(reader)
        assert reader.finished
        return output.choice(0).full_text

    assert asyncio.run(run()) == "abc"


def test_new_attempt_restarts_non_streaming_output() -> None:
    async def run() -> tuple[str, list[object]]:
        replies = router()
        reader = replies.open("r1", time.time() + 5, streaming=False)
        for item in (
            message(FIRST_SEQ, "x"),
            message(FIRST_SEQ + 1, "y"),
            message(FIRST_SEQ, "a", attempt=2),
            message(FIRST_SEQ + 2, "late", attempt=1),  # the old worker, ignored
            message(FIRST_SEQ + 1, "b", attempt=2, finished=True),
        ):
            replies._route(item.encode())
        seen = [item async for item in reader]
        restart = next(i for i, item in enumerate(seen) if isinstance(item, Restart))
        after = seen[restart + 1 :]
        return "".join(m.choices[0].text for m in after if isinstance(m, ReplyMessage)), seen

    text, seen = asyncio.run(run())
    assert isinstance(seen[2], Restart)
    assert text == "ab"


def test_worker_error_and_timeout_raise_api_errors() -> None:
    async def run() -> None:
        replies = router()
        reader = replies.open("r1", time.time() + 5, streaming=True)
        error = ErrorInfo("bad things", code="boom", status=500)
        replies._route(ReplyMessage(id="r1", seq=FIRST_SEQ, error=error).encode())
        with pytest.raises(ApiError) as raised:
            await collect(reader)
        assert raised.value.code == "boom"
        reader = replies.open("r2", time.time() + 0.2, streaming=True)
        with pytest.raises(ApiError) as raised:
            await collect(reader)
        assert raised.value.status == 504

    asyncio.run(run())


def test_cancelling_a_reader_is_never_swallowed() -> None:
    """A departed client cancels collection; the task must end even while messages arrive.

    (Python 3.11's asyncio.wait_for can swallow a cancellation that races a result.)
    """

    async def run() -> None:
        replies = router()
        for trial in range(100):
            reader = replies.open(f"r{trial}", time.time() + 30, streaming=False)

            async def feed(request_id: str) -> None:
                seq = FIRST_SEQ
                while True:
                    replies._route(
                        ReplyMessage(
                            id=request_id,
                            seq=seq,
                            choices=[ChoiceDelta(index=0, text="x", token_ids=[1])],
                        ).encode()
                    )
                    seq += 1
                    await asyncio.sleep(0)

            feeder = asyncio.create_task(feed(f"r{trial}"))
            task = asyncio.create_task(collect(reader))
            await asyncio.sleep(random.random() * 0.002)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            feeder.cancel()
            assert done, f"trial {trial}: the cancellation was swallowed"
            reader.close()

    asyncio.run(run())


def test_silence_recovers_a_lost_final_message_from_the_stored_result(redis_url: str) -> None:
    """Only the final message was lost: no gap to see, so a long silence triggers the lookup."""

    async def run() -> str:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-silence")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        reader = replies.open("r1", time.time() + 5, streaming=False)
        replies._route(message(FIRST_SEQ, "a").encode())
        await store.set(names.result("r1"), message(FIRST_SEQ + 1, "abc", finished=True).encode())
        output = await collect(reader)
        await store.aclose()
        return output.choice(0).full_text

    assert asyncio.run(run()) == "abc"


def test_stream_with_nothing_sent_takes_the_stored_result_on_silence(redis_url: str) -> None:
    """The result was stored just before a final message still in flight: not a loss."""

    async def run() -> list[object]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-silence-stream")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        reader = replies.open("r1", time.time() + 5, streaming=True)
        await store.set(names.result("r1"), message(FIRST_SEQ, "whole", finished=True).encode())
        items = [item async for item in reader]
        await store.aclose()
        return items

    items = asyncio.run(run())
    assert isinstance(items[0], Restart)
    final = items[-1]
    assert isinstance(final, ReplyMessage) and final.finished
    assert final.choices[0].text == "whole"


def test_stream_that_sent_text_still_reports_a_loss_on_silence(redis_url: str) -> None:
    async def run() -> None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-silence-lost")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        reader = replies.open("r1", time.time() + 5, streaming=True)
        replies._route(message(FIRST_SEQ, "a").encode())
        await store.set(names.result("r1"), message(FIRST_SEQ + 2, "abc", finished=True).encode())
        try:
            with pytest.raises(ApiError) as lost:
                async for _ in reader:
                    pass
            assert lost.value.status == 502
        finally:
            await store.aclose()

    asyncio.run(run())


def test_abort_deletes_the_stream_entry_until_a_worker_finished_it(redis_url: str) -> None:
    """A client that leaves while queued must not cost a worker its generation later, nor
    one whose worker took it and died, missing the abort (the janitor would rerun it).
    An entry whose worker sent its final message is the worker's to delete."""

    async def run() -> tuple[list[str], int]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-abort-queued")
        replies = ReplyRouter(store, names, "api-unit")
        stream = names.requests("m")
        await store.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
        ids = {}
        for name in ("taken", "finished", "waiting"):
            ids[name] = await store.xadd(stream, {"data": name})
            replies.open(name, time.time() + 5, streaming=True)
            replies.queued(name, stream, ids[name])
            if name == "finished":  # both went to a worker that then died (acking nothing)
                await store.xreadgroup(WORKER_GROUP, "w-dead", {stream: ">"})
        replies._route(ReplyMessage(id="taken", seq=FIRST_SEQ).encode())
        replies._route(ReplyMessage(id="finished", seq=FIRST_SEQ, finished=True).encode())
        # (a real worker would have deleted "finished" itself; kept to see who deletes it)
        await replies.abort(["waiting", "taken", "finished"])
        left = [entry_id for entry_id, _ in await store.xrange(stream)]
        pending = (await store.xpending(stream, WORKER_GROUP))["pending"]
        await store.aclose()
        named = {entry_id: name for name, entry_id in ids.items()}
        return [named[entry_id] for entry_id in left], pending

    # The dead worker's "taken" left its pending list with the entry: no janitor reruns
    # it, and the queue's pending count holds no ghost; "finished" is its worker's.
    assert asyncio.run(run()) == (["finished"], 1)


async def _until_done(reader: object) -> ApiError | None:
    """Read to the end; the ApiError that ended the request, or None if it finished."""
    try:
        async for _ in reader:  # type: ignore[attr-defined]
            pass
    except ApiError as exc:
        return exc
    return None


def test_a_request_redis_forgot_ends_at_once(redis_url: str) -> None:
    """Redis restarted empty: the queue entry and any result are gone, so nothing can
    answer; the request ends now, not at its deadline."""

    async def run() -> tuple[ApiError | None, float]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-forgotten")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        stream = names.requests("m")
        reader = replies.open("r1", time.time() + 30, streaming=False)
        replies.queued("r1", stream, await store.xadd(stream, {"data": "x"}), "m")
        await store.delete(stream)
        started = time.monotonic()
        error = await _until_done(reader)
        await store.aclose()
        return error, time.monotonic() - started

    error, took = asyncio.run(run())
    assert error is not None and (error.status, error.code) == (503, "request_lost")
    assert took < 5


@pytest.mark.parametrize("streaming", [True, False])
def test_a_stream_whose_worker_died_ends_after_the_grace(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    """A stream that sent tokens cannot be restarted elsewhere, so once its worker's
    heartbeat has been gone for the grace it ends; a non-streamed request waits for the
    restart (here: until its deadline)."""
    monkeypatch.setattr("api.reply_router.WORKER_LOSS_GRACE", 0.3)

    async def run() -> ApiError | None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames(f"unit-dead-worker-{streaming}")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        stream = names.requests("m")
        reader = replies.open("r1", time.time() + 2, streaming=streaming)
        replies.queued("r1", stream, await store.xadd(stream, {"data": "x"}), "m")
        first = ReplyMessage(
            id="r1",
            seq=FIRST_SEQ,
            choices=[ChoiceDelta(index=0, text="a", token_ids=[1])],
            worker="w1",
        )
        replies._route(first.encode())  # w1 has no heartbeat key: it is gone
        error = await _until_done(reader)
        await store.aclose()
        return error

    error = asyncio.run(run())
    assert error is not None
    if streaming:
        assert (error.status, error.code) == (503, "worker_restarted")
        assert "no heartbeat" in error.message and "another worker" not in error.message
    else:
        assert (error.status, error.code) == (504, "timeout")


def test_a_live_workers_silent_stream_waits(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with a heartbeat is only slow (a long prefill): its stream is left alone."""
    monkeypatch.setattr("api.reply_router.WORKER_LOSS_GRACE", 0.1)

    async def run() -> ApiError | None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-live-worker")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        stream = names.requests("m")
        reader = replies.open("r1", time.time() + 1.5, streaming=True)
        replies.queued("r1", stream, await store.xadd(stream, {"data": "x"}), "m")
        await store.set(names.worker("m", "w1"), "{}", px=10_000)
        first = ReplyMessage(
            id="r1",
            seq=FIRST_SEQ,
            choices=[ChoiceDelta(index=0, text="a", token_ids=[1])],
            worker="w1",
        )
        replies._route(first.encode())
        error = await _until_done(reader)
        await store.aclose()
        return error

    error = asyncio.run(run())
    assert error is not None and error.code == "timeout"


def test_an_unreachable_redis_ends_requests_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("api.reply_router.REDIS_LOSS_GRACE", 0.3)

    async def run() -> tuple[ApiError | None, float]:
        nowhere = aioredis.from_url(
            f"redis://127.0.0.1:{free_port()}/0", decode_responses=True, socket_connect_timeout=1
        )
        names = BusNames("unit-unreachable")
        replies = ReplyRouter(nowhere, names, "api-unit", silence_check=0.1)
        reader = replies.open("r1", time.time() + 30, streaming=True)
        replies.queued("r1", names.requests("m"), "1-0", "m")
        started = time.monotonic()
        error = await _until_done(reader)
        await nowhere.aclose()
        return error, time.monotonic() - started

    error, took = asyncio.run(run())
    assert error is not None and (error.status, error.code) == (503, "queue_unavailable")
    assert took < 5


def test_a_hung_redis_ends_requests_after_the_grace_not_its_read_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped redis-server takes connections and never answers: each lookup the reader
    makes waits at most a silence_check, not the client's (far longer) read timeout, and
    the 503 says why (a bare timeout's message was empty)."""
    monkeypatch.setattr("api.reply_router.REDIS_LOSS_GRACE", 1.0)

    async def run(server: EmbeddedRedis) -> tuple[ApiError | None, float]:
        assert server.process is not None
        hung = aioredis.from_url(server.url, decode_responses=True, socket_timeout=60)
        names = BusNames("unit-hung")
        replies = ReplyRouter(hung, names, "api-unit", silence_check=0.2)
        reader = replies.open("r1", time.time() + 120, streaming=False)
        replies.queued("r1", names.requests("m"), await hung.xadd(names.requests("m"), {"d": "x"}))
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            error = await _until_done(reader)
            return error, time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
            await hung.aclose()

    with EmbeddedRedis() as server:
        error, took = asyncio.run(run(server))
    assert error is not None and (error.status, error.code) == (503, "queue_unavailable")
    assert error.headers == {"Retry-After": "5"}
    assert "()" not in error.message and "no answer" in error.message
    assert took < 10


def test_a_request_a_live_worker_still_runs_is_not_lost(redis_url: str) -> None:
    """Redis restarted empty while a worker generates a non-streamed answer: its first
    message named the worker, whose heartbeat is back, so the reader waits for the
    result the worker stores when it is done."""

    async def run() -> tuple[str, float]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-held")
        replies = ReplyRouter(store, names, "api-unit", silence_check=0.1)
        stream = names.requests("m")
        reader = replies.open("r1", time.time() + 30, streaming=False)
        replies.queued("r1", stream, await store.xadd(stream, {"data": "x"}), "m")
        replies._route(ReplyMessage(id="r1", seq=FIRST_SEQ, worker="w1").encode())
        await store.delete(stream)  # Redis forgot the entry...
        await store.set(names.worker("m", "w1"), "{}", px=10_000)  # ...w1 is alive

        async def finish_later() -> None:
            await asyncio.sleep(1.0)  # ten checks' worth
            done = message(FIRST_SEQ + 1, "whole", finished=True)
            await store.set(names.result("r1"), done.encode())

        started = time.monotonic()
        task = asyncio.create_task(finish_later())
        output = await collect(reader)
        await task
        await store.aclose()
        return output.choice(0).full_text, time.monotonic() - started

    text, took = asyncio.run(run())
    assert text == "whole" and took >= 1.0


class _Served:
    """A stand-in for the catalog's `serves`: which models have a live worker now."""

    def __init__(self, *models: str) -> None:
        self.models = set(models)
        self.asked: list[str] = []

    async def __call__(self, model: str) -> bool:
        self.asked.append(model)
        return model in self.models


async def _queued(
    store: aioredis.Redis,
    prefix: str,
    served: Callable[[str], Awaitable[bool]],
    worker_loss_timeout: float,
    *,
    within: float = 30,
    streaming: bool = False,
    group: bool = False,
) -> tuple[ReplyRouter, ReplyReader]:
    """A router that asks `served`, and request r1 of model m queued on it (deadline
    `within` seconds on; `group`: the workers' consumer group exists)."""
    names = BusNames(prefix)
    replies = ReplyRouter(
        store,
        names,
        "api-unit",
        silence_check=0.1,
        model_served=served,
        worker_loss_timeout=worker_loss_timeout,
    )
    stream = names.requests("m")
    if group:
        await store.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    reader = replies.open("r1", time.time() + within, streaming=streaming)
    replies.queued("r1", stream, await store.xadd(stream, {"data": "x"}), "m")
    return replies, reader


def _first_token_from(replies: ReplyRouter, worker: str) -> None:
    """r1's first message, naming the worker that runs it (with a token of text)."""
    first = ReplyMessage(
        id="r1",
        seq=FIRST_SEQ,
        choices=[ChoiceDelta(index=0, text="a", token_ids=[1])],
        worker=worker,
    )
    replies._route(first.encode())


@pytest.mark.parametrize("streaming", [False, True])
def test_a_queued_request_whose_model_has_no_worker_ends_after_the_timeout(
    redis_url: str, streaming: bool
) -> None:
    """Nothing holds the request and no worker serves its model: a 503 no_worker naming
    the model once that has lasted worker_loss_timeout, long before the deadline."""

    async def run() -> tuple[ApiError | None, float, list[str]]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        served = _Served()
        _, reader = await _queued(
            store, f"unit-unserved-{streaming}", served, 0.5, streaming=streaming
        )
        started = time.monotonic()
        error = await _until_done(reader)
        await store.aclose()
        return error, time.monotonic() - started, served.asked

    error, took, asked = asyncio.run(run())
    assert error is not None and (error.status, error.code) == (503, "no_worker")
    assert "`m`" in error.message and error.headers == {"Retry-After": "5"}
    assert 0.5 <= took < 5
    assert set(asked) == {"m"}


def test_a_request_waits_while_its_model_has_a_worker(redis_url: str) -> None:
    """A live worker of the model will read the request (or reclaim it from a dead
    one): it waits, here until its deadline."""

    async def run() -> ApiError | None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        _, reader = await _queued(store, "unit-served", _Served("m"), 0.2, within=1.5)
        error = await _until_done(reader)
        await store.aclose()
        return error

    error = asyncio.run(run())
    assert error is not None and error.code == "timeout"


def test_a_request_its_draining_worker_holds_is_not_ended(redis_url: str) -> None:
    """The model's only worker is draining (the catalog leaves it out) but still beats
    and runs this request: the request waits for its answer."""

    async def run() -> tuple[str, float]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        replies, reader = await _queued(store, "unit-draining", _Served(), 0.2)
        await store.set(replies.names.worker("m", "w1"), "{}", px=10_000)
        replies._route(ReplyMessage(id="r1", seq=FIRST_SEQ, worker="w1").encode())

        async def finish_later() -> None:
            await asyncio.sleep(1.0)  # five timeouts' worth
            replies._route(message(FIRST_SEQ + 1, "whole", finished=True).encode())

        started = time.monotonic()
        task = asyncio.create_task(finish_later())
        output = await collect(reader)
        await task
        await store.aclose()
        return output.choice(0).full_text, time.monotonic() - started

    text, took = asyncio.run(run())
    assert text == "whole" and took >= 1.0


def test_a_request_a_draining_worker_read_but_has_not_started_waits(redis_url: str) -> None:
    """The draining worker (left out of the catalog) read the request but has sent no
    reply yet: the queue's pending list names it, and it beats, so the request waits."""

    async def run() -> ApiError | None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        replies, reader = await _queued(
            store, "unit-draining-unstarted", _Served(), 0.2, within=1.5, group=True
        )
        await store.xreadgroup(WORKER_GROUP, "w1", {replies.names.requests("m"): ">"}, count=1)
        await store.set(replies.names.worker("m", "w1"), "{}", px=10_000)
        error = await _until_done(reader)
        await store.aclose()
        return error

    error = asyncio.run(run())
    assert error is not None and error.code == "timeout"


def test_a_worker_back_within_the_timeout_resumes_the_request(redis_url: str) -> None:
    """The model's worker restarts inside worker_loss_timeout: the clock starts over and
    the restarted worker's answer reaches the client."""

    async def run() -> str:
        store = aioredis.from_url(redis_url, decode_responses=True)
        served = _Served()
        replies, reader = await _queued(store, "unit-restarted", served, 2.0)

        async def restart() -> None:
            await asyncio.sleep(1.2)
            served.models.add("m")  # back before the timeout...
            await asyncio.sleep(0.5)
            served.models.clear()  # ...gone again: a fresh 2 s, not 0.8
            await asyncio.sleep(1.2)
            served.models.add("m")
            replies._route(ReplyMessage(id="r1", seq=FIRST_SEQ, worker="w2").encode())
            replies._route(message(FIRST_SEQ + 1, "whole", finished=True).encode())

        task = asyncio.create_task(restart())
        output = await collect(reader)
        await task
        await store.aclose()
        return output.choice(0).full_text

    assert asyncio.run(run()) == "whole"


async def _failing_scan(model: str) -> bool:
    raise RedisConnectionError("scan failed")


@pytest.mark.parametrize(
    ("served", "worker_loss_timeout"),
    [(_Served(), 60.0), (_failing_scan, 0.0)],
    ids=["no-worker-serves-the-model", "the-catalog-scan-fails"],
)
def test_a_stream_that_sent_tokens_ends_after_the_grace_when_its_worker_died(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    served: Callable[[str], Awaitable[bool]],
    worker_loss_timeout: float,
) -> None:
    """A stream cannot be restarted, so once its worker is gone it ends after
    WORKER_LOSS_GRACE with worker_restarted, whatever the model's other workers: not
    after worker_loss_timeout, and not never when the catalog's scan fails (a failing
    scan is no verdict either: it never ends a request for want of workers)."""
    monkeypatch.setattr("api.reply_router.WORKER_LOSS_GRACE", 0.3)

    async def run() -> tuple[ApiError | None, float]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        prefix = f"unit-stream-gone-{worker_loss_timeout}"
        replies, reader = await _queued(
            store, prefix, served, worker_loss_timeout, within=5, streaming=True
        )
        _first_token_from(replies, "w1")  # w1 has no heartbeat key: it is gone
        started = time.monotonic()
        error = await _until_done(reader)
        await store.aclose()
        return error, time.monotonic() - started

    error, took = asyncio.run(run())
    assert error is not None and (error.status, error.code) == (503, "worker_restarted")
    assert took < 4
