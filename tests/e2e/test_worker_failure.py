"""A worker killed mid-request: another worker finishes it; nobody hangs.

This runs the production topology (one `conveyor api`, two `conveyor worker`
processes, one Redis) rather than `conveyor serve`, whose supervisor would
restart its own worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from conveyor.embedded_redis import EmbeddedRedis, free_port

from .conftest import STARTUP_TIMEOUT, server_env, stop, wait_healthy

PREFIX = "failover"


@pytest.fixture()
def topology(bundled_model_dir: Path) -> Iterator[tuple[str, redis.Redis, list]]:
    with EmbeddedRedis() as store:
        env = server_env(bundled_model_dir, store.url, CONVEYOR_REDIS_PREFIX=PREFIX)
        port = free_port()
        cli = [sys.executable, "-m", "conveyor.cli"]
        workers = [subprocess.Popen([*cli, "worker"], env=env) for _ in range(2)]
        api = subprocess.Popen([*cli, "api", "--port", str(port), "--host", "127.0.0.1"], env=env)
        base_url = f"http://127.0.0.1:{port}"
        client = redis.Redis.from_url(store.url)
        try:
            wait_healthy(base_url, api, STARTUP_TIMEOUT)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while len(client.keys(f"{PREFIX}:worker:*")) < 2:
                assert time.monotonic() < deadline, "second worker never announced itself"
                time.sleep(0.2)
            yield base_url, client, workers
        finally:
            for process in (api, *workers):
                stop(process, timeout=20)


def _busy_worker_pid(client: redis.Redis) -> int | None:
    for key in client.keys(f"{PREFIX}:worker:*"):
        raw = client.get(key)
        if raw and json.loads(raw).get("running", 0) > 0:
            return int(json.loads(raw)["pid"])
    return None


def test_killed_worker_request_completes_elsewhere(topology) -> None:
    base_url, client, workers = topology
    sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=300)
    result: dict = {}

    def call() -> None:
        try:
            result["out"] = sdk.completions.create(
                model="smollm2",
                prompt="Once upon a time",
                max_tokens=200,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
        except Exception as exc:  # surfaced by the assertions below
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 60
    pid = None
    while pid is None and time.monotonic() < deadline:
        pid = _busy_worker_pid(client)
        time.sleep(0.1)
    assert pid is not None, "no worker ever picked the request up"
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the request hung after its worker died"
    assert "error" not in result, result.get("error")
    out = result["out"]
    assert out.usage.completion_tokens == 200
    assert sum(w.poll() is None for w in workers) == 1
