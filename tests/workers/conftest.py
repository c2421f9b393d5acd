"""Worker fixtures: one small engine for the module, and a worker driven as an API would."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor.bus import BusNames
from conveyor.protocol import GenerateRequest, ReplyMessage
from conveyor.settings import Settings
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from workers.engine_worker import EngineWorker
from workers.intake import REQUEST_FIELD

API = "api-test"


@pytest.fixture(scope="module")
def engine(bundled_model_dir: Path) -> LLMEngine:
    """max_num_seqs=2 so back-pressure shows with a handful of requests."""
    config = EngineConfig(
        model=str(bundled_model_dir), kv_cache_memory=128 << 20, max_model_len=1024, max_num_seqs=2
    )
    return LLMEngine(config)


def tiny_llama_engine(make_random_model: Callable[[str], Path]) -> LLMEngine:
    """A tiny random Llama, so a long request is quick, whose small prefill budget lets a
    few prompts' prefill run per step (some wait for theirs): for the modules that end
    or freeze requests mid-run (pause, aborts)."""
    config = EngineConfig(
        model=str(make_random_model("llama")),
        served_model_name="tiny",
        kv_cache_memory=16 << 20,
        max_num_batched_tokens=64,
    )
    return LLMEngine(config)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


class Harness:
    """A running worker plus the API side of the bus: send requests, collect replies."""

    def __init__(
        self, client: redis.Redis, names: BusNames, worker: EngineWorker, settings: Settings
    ) -> None:
        self.client = client
        self.names = names
        self.worker = worker
        self.settings = settings
        self.model = worker.model
        self.stream = names.requests(worker.model)
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(names.reply(API))
        self.messages: dict[str, list[ReplyMessage]] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            self.exit_code = self.worker.run(self.stop)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.client.exists(self.names.worker(self.model, self.worker.instance)))

    def shutdown(self, timeout: float = 30.0) -> None:
        self.stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop"
        self.pubsub.close()

    def request(
        self, prompt: list[int], stream: bool = True, deadline: float | None = None, **sampling: Any
    ) -> GenerateRequest:
        fields: dict[str, Any] = {"temperature": 0.0, "max_tokens": 6}
        fields.update(sampling)
        return GenerateRequest(
            id=f"req-{uuid.uuid4().hex[:8]}",
            reply_to=API,
            model=self.model,
            prompt_token_ids=prompt,
            sampling=fields,
            arrival=time.time(),
            stream=stream,
            deadline=deadline,
        )

    def send(self, request: GenerateRequest) -> str:
        self.client.xadd(self.stream, {REQUEST_FIELD: request.encode()})
        return request.id

    def collect(self, ids: list[str], timeout: float = 20.0) -> dict[str, list[ReplyMessage]]:
        """Read replies until every id has a finished message."""
        deadline = time.monotonic() + timeout
        while not all(self.finished(i) for i in ids):
            assert time.monotonic() < deadline, f"no final reply within {timeout} s"
            self.poll(0.1)
        return {i: self.messages[i] for i in ids}

    def poll(self, timeout: float) -> None:
        message = self.pubsub.get_message(timeout=timeout)
        if message is not None and message["type"] == "message":
            reply = ReplyMessage.decode(message["data"])
            self.messages.setdefault(reply.id, []).append(reply)

    def finished(self, request_id: str) -> bool:
        return any(m.finished for m in self.messages.get(request_id, []))

    def beat(self) -> dict[str, Any]:
        """The worker's heartbeat as it stands in Redis ({} before the first)."""
        raw = self.client.get(self.names.worker(self.model, self.worker.instance))
        return json.loads(raw) if raw else {}

    def pending(self, consumer: str | None = None) -> int:
        if consumer is None:
            return int(self.client.xpending(self.stream, "workers")["pending"])
        rows = self.client.xpending_range(
            self.stream, "workers", "-", "+", 100, consumername=consumer
        )
        return len(rows)


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def make_worker(
    engine: LLMEngine, client: redis.Redis, redis_url: str
) -> Iterator[Callable[..., Harness]]:
    """`make_worker(start=True, **settings)`: a worker on a fresh key prefix, stopped after."""
    harnesses: list[Harness] = []

    def build(start: bool = True, instance: str | None = None, **overrides: Any) -> Harness:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "heartbeat_interval": 0.2,
            "heartbeat_ttl": 2.0,
            "janitor_interval": 0.2,
            "janitor_idle": 0.5,
            "result_ttl": 60.0,
        }
        values.update(overrides)
        settings = Settings(**values)
        names = BusNames(prefix=prefix)
        worker = EngineWorker(
            engine,
            redis_url,
            names,
            instance or f"w-{uuid.uuid4().hex[:6]}",
            settings,
            drain_timeout=10.0,
        )
        harness = Harness(client, names, worker, settings)
        harnesses.append(harness)
        if start:
            harness.start()
        return harness

    yield build
    for harness in harnesses:
        if harness._thread is not None and harness._thread.is_alive():
            harness.shutdown()
    assert engine.num_requests == 0, "a worker left requests in the shared engine"
