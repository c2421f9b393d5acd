"""API fixtures: a real Redis, a scripted fake worker and the app under uvicorn.

Each stack gets its own Redis key prefix, so stacks never see each other's
streams, heartbeats or replies even though they share one redis-server.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from conveyor.bus import BusNames
from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog
from conveyor.settings import Settings

from .fakes import SCRIPT_TEXT, FakeWorker, LiveServer, wait_for

MODEL = "fake-model"
MAX_MODEL_LEN = 256


@dataclass
class Stack:
    server: LiveServer
    worker: FakeWorker
    names: BusNames
    redis_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10)
        if self.server.settings.uds:
            kwargs.setdefault("transport", httpx.HTTPTransport(uds=self.server.settings.uds))
        return httpx.Client(base_url=self.url, **kwargs)


def make_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "instance_id": f"api-{prefix}",
        "request_timeout": 10.0,
        "database_url": f"sqlite:///{tempfile.mkdtemp(prefix='conveyor-db-')}/conveyor.db",
    }
    values.update(overrides)
    return Settings(**values)


def new_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def running_stack(
    redis_url: str, model_dir: Path, *, with_worker: bool = True, **overrides: Any
) -> Iterator[Stack]:
    """A fake worker (unless `with_worker` is False) and an API server on a fresh prefix."""
    prefix = new_prefix()
    names = BusNames(prefix)
    worker = FakeWorker(redis_url, names, MODEL, model_dir, MAX_MODEL_LEN)
    if with_worker:
        worker.start()
    try:
        server = LiveServer(make_settings(redis_url, prefix, **overrides)).start()
        try:
            yield Stack(server, worker, names, redis_url)
        finally:
            server.stop()
    finally:
        if with_worker:
            worker.stop()


@contextmanager
def worker_on(
    stack: Stack, model: str = MODEL, model_dir: Path | None = None, **fields: Any
) -> Iterator[FakeWorker]:
    """Another scripted worker on `stack`'s bus (of `model`, with `fields` such as its
    instance and LoRA adapters; `model_dir`: its tokenizer's, else the stack's), stopped
    on leaving."""
    folder = model_dir or stack.worker.model_dir
    worker = FakeWorker(stack.redis_url, stack.names, model, folder, **fields)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def stack(redis_url: str, bundled_model_dir: Path) -> Iterator[Stack]:
    """One worker + one API server per test module (starting them is the slow part)."""
    with running_stack(redis_url, bundled_model_dir) as started:
        yield started


@pytest.fixture()
def worker(stack: Stack) -> Iterator[FakeWorker]:
    """The module's worker, reset to normal behaviour for each test."""
    stack.worker.behaviour = "normal"
    stack.worker.set_script(SCRIPT_TEXT)
    stack.worker.received.clear()
    stack.worker.aborted.clear()
    yield stack.worker
    stack.worker.behaviour = "normal"


@pytest.fixture()
def client(stack: Stack, worker: FakeWorker) -> Iterator[httpx.Client]:
    with stack.client() as http:
        yield http


@pytest.fixture()
def make_stack(redis_url: str, bundled_model_dir: Path) -> Iterator[Callable[..., Stack]]:
    """A stack with custom settings (and optionally no running worker), stopped after the test."""
    with ExitStack() as stacks:

        def build(**kwargs: Any) -> Stack:
            return stacks.enter_context(running_stack(redis_url, bundled_model_dir, **kwargs))

        yield build


def sdk_client(stack: Stack) -> openai.OpenAI:
    """The official SDK pointed at a stack: no retries, so a failure shows as it is."""
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=10)


@pytest.fixture()
def sdk(stack: Stack, worker: FakeWorker) -> Iterator[openai.OpenAI]:
    with sdk_client(stack) as client:
        yield client


@pytest.fixture()
def hermes_sdk(make_stack: Callable[..., Stack]) -> Iterator[tuple[openai.OpenAI, Stack]]:
    """A stack of its own with --tool-call-parser hermes, and the SDK on it."""
    stack = make_stack(tool_call_parser="hermes")
    with sdk_client(stack) as client:
        yield client, stack


def log_row(stack: Stack, request_id: str) -> RequestLog:
    """The request's log row, once the buffer has written it."""
    database = Database(stack.server.settings.resolved_database_url)
    try:

        def read() -> RequestLog | None:
            with database.session() as session:
                return session.scalars(
                    select(RequestLog).where(RequestLog.request_id == request_id)
                ).one_or_none()

        wait_for(read, timeout=10)
        row = read()
        assert row is not None
        return row
    finally:
        database.close()
