"""/health, /version and /metrics."""

from __future__ import annotations

import json
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from conveyor.embedded_redis import EmbeddedRedis

from .conftest import MODEL, Stack, running_stack
from .fakes import FakeWorker, wait_for


def test_health_ok_with_a_live_worker(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    # vLLM's /ping (SageMaker's health path), GET or POST, answers the same.
    assert client.get("/ping").json() == client.post("/ping").json() == {"status": "ok"}


def test_load_counts_the_generations_in_flight(client: httpx.Client, worker: FakeWorker) -> None:
    """vLLM's GET /load: what this API process is waiting on, for load balancers."""
    assert client.get("/load").json() == {"server_load": 0}
    worker.behaviour = "slow"  # a token every 50 ms, until aborted
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 200, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()  # held: a dropped iterator would close the stream
        assert next(lines).startswith("data: ")
        assert client.get("/load").json() == {"server_load": 1}
    wait_for(lambda: client.get("/load").json() == {"server_load": 0})


def test_ping_is_health_when_unhealthy_too(make_stack: Callable[..., Stack]) -> None:
    with make_stack(with_worker=False).client() as http:
        assert http.get("/ping").status_code == http.post("/ping").status_code == 503


def test_health_503_without_workers(make_stack: Callable[..., Stack]) -> None:
    with make_stack(with_worker=False).client() as http:
        response = http.get("/health")
    assert response.status_code == 503
    assert "no model" in response.json()["error"]["message"]


def test_readyz_needs_no_worker_and_fails_once_draining(
    make_stack: Callable[..., Stack],
) -> None:
    """Kubernetes' readiness: the pod can take requests without any worker (they get the
    API's own 503 no_worker); a stopping pod is not ready."""
    stack = make_stack(with_worker=False)
    with stack.client() as http:
        assert http.get("/health").status_code == 503
        assert http.get("/readyz").json() == {"status": "ok"}
        completion = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert completion.status_code in (404, 503)  # never a proxy's bare page
        stack.server.app.state.drain.begin()
        draining = http.get("/readyz")
    assert draining.status_code == 503
    assert draining.json()["error"]["message"] == "shutting down"


def test_health_503_when_a_served_model_has_no_worker(
    make_stack: Callable[..., Stack],
) -> None:
    with make_stack(served_model_name="other-model").client() as http:
        response = http.get("/health")
    assert response.status_code == 503
    assert "other-model" in response.json()["error"]["message"]


def test_health_503_when_a_known_model_lost_its_worker(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    redis.Redis.from_url(stack.redis_url).set(stack.names.known_model("old-model"), "1")
    with stack.client() as http:
        response = http.get("/health")
    assert response.status_code == 503
    assert "old-model" in response.json()["error"]["message"]


def test_health_503_when_redis_is_gone(bundled_model_dir: Any) -> None:
    with EmbeddedRedis() as store, running_stack(store.url, bundled_model_dir) as stack:
        with stack.client() as http:
            assert http.get("/health").status_code == 200
            assert http.get("/readyz").status_code == 200
            store.stop()
            assert http.get("/readyz").status_code == 503
            response = http.get("/health")
            generate = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert response.status_code == 503
        assert "Redis" in response.json()["error"]["message"]
        # An outage, not a bug: 503 with Retry-After, never 500.
        assert generate.status_code == 503, generate.text
        assert generate.headers["retry-after"]


def test_version(client: httpx.Client) -> None:
    response = client.get("/version")
    assert response.status_code == 200
    assert isinstance(response.json()["version"], str)


@pytest.fixture()
def fake_metrics_module(monkeypatch: pytest.MonkeyPatch) -> list[list[dict]]:
    """Stand in for conveyor.metrics (written elsewhere), recording what it is given."""
    calls: list[list[dict]] = []

    def render_worker_metrics(snapshots: list[dict], queued: dict[str, int]) -> bytes:
        assert queued[MODEL] == 0  # each model's undelivered requests, counted as waiting
        calls.append(snapshots)
        return f"vllm:num_requests_running {sum(s['running'] for s in snapshots)}\n".encode()

    module = types.ModuleType("conveyor.metrics")
    module.render_worker_metrics = render_worker_metrics  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "conveyor.metrics", module)
    return calls


def test_metrics_joins_worker_snapshots_and_queue_gauges(
    client: httpx.Client, stack: Stack, fake_metrics_module: list[list[dict]]
) -> None:
    store = redis.Redis.from_url(stack.redis_url)
    store.set(stack.names.worker_metrics("w1"), json.dumps({"instance": "w1", "running": 2}))
    store.set(stack.names.worker_metrics("w2"), json.dumps({"instance": "w2", "running": 3}))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "vllm:num_requests_running 5" in text
    assert sorted(s["instance"] for s in fake_metrics_module[-1]) == ["w1", "w2"]
    for name in ("queue_length", "queue_pending", "queue_undelivered"):
        for lane in ("interactive", "batch"):
            assert f'conveyor:{name}{{lane="{lane}",model="{MODEL}"}}' in text
    assert f'conveyor:dead_letters{{model="{MODEL}"}}' in text
    assert "conveyor:api_requests_in_flight" in text
    # The API process's own, as vLLM's default registry gives them.
    for series in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{series}" in text, series
    assert "python_gc_collections_total{" in text


def test_metrics_survive_a_broken_worker_renderer(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("conveyor.metrics")

    def broken(snapshots: list[dict], queued: dict[str, int]) -> bytes:
        raise RuntimeError("boom")

    module.render_worker_metrics = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "conveyor.metrics", module)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "conveyor:queue_length" in response.text


def test_run_api_needs_a_redis_url() -> None:
    from api.server import run_api
    from conveyor.settings import Settings

    assert run_api(Settings(redis_url=None)) == 2


def test_run_api_waits_for_redis_then_exits_1_saying_why_and_ignores_a_server_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from api.server import run_api
    from conveyor import redis_wait
    from conveyor.settings import Settings

    monkeypatch.setattr(redis_wait, "REDIS_STARTUP_WAIT", 0.3)
    settings = Settings(redis_url="redis://:pw@127.0.0.1:1/0", api_server_count=2)
    with caplog.at_level(logging.WARNING):
        assert run_api(settings) == 1
    (ignored,) = [r.getMessage() for r in caplog.records if r.name == "api.server"]
    assert ignored.startswith("--api-server-count 2 is for `conveyor serve`")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [errors[0]]
    assert errors[0].startswith("cannot reach Redis at redis://:***@127.0.0.1:1/0: ")


def test_run_api_with_a_database_it_cannot_use_exits_1_in_one_line(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong database URL (here: nothing listening) was uvicorn's "Application startup
    failed" after a 200-line traceback."""
    from api.server import run_api
    from conveyor.settings import Settings

    url = "postgresql://conveyor:s3cretpw@127.0.0.1:1/conveyor"
    settings = Settings(redis_url=stack.redis_url, database_url=url, port=0)
    with caplog.at_level(logging.ERROR):
        assert run_api(settings) == 1
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is None and "s3cretpw" not in error.getMessage()
    assert error.getMessage().startswith("database postgresql://conveyor:***@127.0.0.1:1/")
    assert "Connection refused" in error.getMessage()


def test_metrics_with_the_real_worker_renderer(client: httpx.Client, stack: Stack) -> None:
    from conveyor.metrics import WorkerMetrics

    store = redis.Redis.from_url(stack.redis_url)
    # A live worker (its heartbeat as the fake worker's), and one whose heartbeat is gone.
    beat = store.get(stack.names.worker(MODEL, stack.worker.instance))
    assert beat is not None
    store.set(stack.names.worker(MODEL, "real-1"), beat, ex=30)
    for instance, running in (("real-1", 4), ("gone-1", 7)):
        metrics = WorkerMetrics(MODEL, instance)
        metrics.set_engine_state(running=running, waiting=1, kv_cache_usage=0.25, num_preemptions=0)
        store.set(stack.names.worker_metrics(instance), json.dumps(metrics.snapshot()), ex=30)
    text = client.get("/metrics").text
    running = [line for line in text.splitlines() if line.startswith("vllm:num_requests_running")]
    assert any('worker="real-1"' in line and line.endswith(" 4.0") for line in running), running
    # The dead worker's final counters stay for a last scrape; it runs nothing any more.
    assert not any('worker="gone-1"' in line for line in running), running
    assert f'vllm:num_preemptions_total{{model_name="{MODEL}",worker="gone-1"}}' in text
    assert f'conveyor:queue_length{{lane="interactive",model="{MODEL}"}}' in text


def test_requests_a_dead_worker_took_count_as_waiting(client: httpx.Client, stack: Stack) -> None:
    """Entries delivered to a worker without a heartbeat wait for a janitor as much as
    undelivered ones: vllm:num_requests_waiting (what autoscalers read) counts them, and
    conveyor:queue_orphaned says how many; a live worker's are running, not waiting."""
    from conveyor.bus import WORKER_GROUP

    names = stack.names
    model = "orphans-model"  # no fake worker reads its queue
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    store.set(names.known_model(model), "1")
    store.set(names.worker(model, "w-live"), json.dumps({"model": model}), ex=30)
    stream = names.requests(model)
    store.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    for _ in range(4):
        store.xadd(stream, {"data": "x"})
    store.xreadgroup(WORKER_GROUP, "w-gone", {stream: ">"}, count=2)
    store.xreadgroup(WORKER_GROUP, "w-live", {stream: ">"}, count=1)
    text = client.get("/metrics").text
    lane = f'{{lane="interactive",model="{model}"}}'
    assert f"conveyor:queue_pending{lane} 3.0" in text
    assert f"conveyor:queue_undelivered{lane} 1.0" in text
    assert f"conveyor:queue_orphaned{lane} 2.0" in text
    assert f'vllm:num_requests_waiting{{model_name="{model}",worker="queue"}} 3.0' in text
