"""`conveyor serve` starts everything, drains on SIGTERM (request logs included) and leaves
no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog
from conveyor.embedded_redis import free_port

from .conftest import STARTUP_TIMEOUT, server_env, wait_healthy


def _children(pid: int) -> set[int]:
    """All descendants of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_drains_in_flight_and_stops_every_child(bundled_model_dir: Path) -> None:
    port = free_port()
    # Request logs are flushed only at shutdown here, so every row proves the SIGTERM flush.
    env = server_env(bundled_model_dir, "", CONVEYOR_LOG_FLUSH_INTERVAL="3600")
    del env["CONVEYOR_REDIS_URL"]  # the embedded redis-server this time
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "serve", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_healthy(base_url, process, STARTUP_TIMEOUT)
    assert httpx.get(f"{base_url}/version").status_code == 200
    warmup = {"model": "smollm2", "prompt": "Hi", "max_tokens": 3}
    for _ in range(3):
        assert httpx.post(f"{base_url}/v1/completions", json=warmup, timeout=60).status_code == 200
    descendants = _children(process.pid)
    assert len(descendants) >= 3  # redis-server, worker, api

    result: dict = {}

    def call() -> None:
        body = {
            "model": "smollm2",
            "prompt": "Tell me a story.",
            "max_tokens": 60,
            "ignore_eos": True,
            "temperature": 0,
        }
        result["response"] = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert process.wait(timeout=90) == 0
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 60
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in descendants if _alive(p)]

    # Nothing was flushed before SIGTERM (interval: an hour); the drain wrote every row.
    database = Database(env["CONVEYOR_DATABASE_URL"])
    with database.session() as session:
        rows = list(session.scalars(select(RequestLog).order_by(RequestLog.id)))
    database.close()
    assert [(r.status_code, r.completion_tokens) for r in rows] == [(200, 3)] * 3 + [(200, 60)]
