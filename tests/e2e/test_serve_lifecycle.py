"""`conveyor serve` starts everything, drains on SIGTERM (request logs included) and leaves
no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import select

from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog
from conveyor.embedded_redis import free_port

from .conftest import STARTUP_TIMEOUT, server_env, serving, wait_healthy


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


DRAIN = 10  # --drain-timeout: long enough for the short request, not for the long ones


def test_sigterm_drains_in_flight_and_stops_every_child(bundled_model_dir: Path) -> None:
    """SIGTERM: what can finish within --drain-timeout finishes; what cannot ends with an
    OpenAI-shaped 503 (a stream: an error event and [DONE]), never a cut connection."""
    port = free_port()
    # Request logs are flushed only at shutdown here, so every row proves the SIGTERM flush.
    env = server_env(bundled_model_dir, "", CONVEYOR_LOG_FLUSH_INTERVAL="3600")
    del env["CONVEYOR_REDIS_URL"]  # the embedded redis-server this time
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "conveyor.cli", "serve"),
            *("--port", str(port), "--host", "127.0.0.1", "--drain-timeout", str(DRAIN)),
        ],
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
    story = {"model": "smollm2", "prompt": "Tell me a story.", "ignore_eos": True}

    def short() -> None:
        body = {**story, "max_tokens": 40, "temperature": 0}
        result["short"] = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)

    def long() -> None:  # far more than the drain leaves time for
        body = {**story, "max_tokens": 1500}
        result["long"] = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)

    def long_stream() -> None:
        body = {**story, "max_tokens": 1500, "stream": True}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as r:
            result["stream"] = [line for line in r.iter_lines() if line.startswith("data: ")]

    threads = [threading.Thread(target=call) for call in (short, long, long_stream)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for thread in threads:
        thread.join(timeout=120)
    assert process.wait(timeout=90) == 0
    assert time.monotonic() - signalled < DRAIN + 20
    response = result["short"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 40
    assert result["long"].status_code == 503
    assert result["long"].json()["error"]["code"] == "shutting_down"
    assert result["long"].headers["retry-after"] == "1"  # another replica, or a restart
    *tokens, error, done = result["stream"]
    assert len(tokens) > 1 and done == "data: [DONE]"
    assert json.loads(error.removeprefix("data: "))["error"]["code"] == "shutting_down"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in descendants if _alive(p)]

    # Nothing was flushed before SIGTERM (interval: an hour); the drain wrote every row.
    database = Database(env["CONVEYOR_DATABASE_URL"])
    with database.session() as session:
        rows = list(session.scalars(select(RequestLog).order_by(RequestLog.id)))
    database.close()
    logged = sorted((r.status_code, r.completion_tokens > 40) for r in rows)
    # The warm-ups, the short request, the stream (billed what it sent), the 503.
    assert logged == [(200, False)] * 4 + [(200, True), (503, False)]


def test_a_dead_embedded_redis_is_restarted_and_its_requests_end(bundled_model_dir: Path) -> None:
    """kill -9 of the embedded redis-server: the supervisor starts a new one, serving
    resumes, and every request in flight ends soon (not at its deadline): a stream with an
    error (its tokens sent meanwhile are lost), a non-streamed request whole (its worker
    stores the result in the new Redis)."""
    # A request that waited for its deadline would end with a 504 `timeout` at 300 s.
    with serving(bundled_model_dir, CONVEYOR_REQUEST_TIMEOUT="300") as (base_url, process):
        body = {"model": "smollm2", "prompt": "Tell me a story.", "max_tokens": 1500}

        def burst() -> list[httpx.Response]:
            """8 requests at once: the API draws 8 pooled Redis connections."""
            quick = {**body, "max_tokens": 2}
            with ThreadPoolExecutor(8) as pool:
                return list(
                    pool.map(
                        lambda _: httpx.post(f"{base_url}/v1/completions", json=quick, timeout=60),
                        range(8),
                    )
                )

        assert all(r.is_success for r in burst())  # the pool holds 8 connections now

        def redis_servers() -> list[int]:
            return [
                pid
                for pid in _children(process.pid)
                if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]

        (first,) = redis_servers()
        result: dict = {}

        def whole() -> None:
            # Long enough to outlast the reader's checks after the restart (5 s apart).
            short = {**body, "max_tokens": 250, "ignore_eos": True, "temperature": 0}
            result["whole"] = httpx.post(f"{base_url}/v1/completions", json=short, timeout=300)

        def stream() -> None:
            streamed = {**body, "max_tokens": 150, "ignore_eos": True, "stream": True}
            with httpx.stream(
                "POST", f"{base_url}/v1/completions", json=streamed, timeout=300
            ) as r:
                result["stream"] = [line for line in r.iter_lines() if line.startswith("data: ")]

        threads = [threading.Thread(target=call) for call in (whole, stream)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        for thread in threads:
            thread.join(timeout=280)
        assert time.monotonic() - killed < 280  # before the requests' deadline
        assert result["whole"].status_code == 200, result["whole"].text
        assert result["whole"].json()["usage"]["completion_tokens"] == 250
        *_, last, done = result["stream"]
        assert done == "data: [DONE]"
        last_event = json.loads(last.removeprefix("data: "))
        if "error" in last_event:  # messages published while Redis was away were lost
            assert last_event["error"]["code"] in ("reply_lost", "request_lost")
        else:  # the worker's held messages reached the new Redis in time: nothing lost
            assert last_event["choices"][0]["finish_reason"] == "length"

        (second,) = redis_servers()
        assert second != first
        time.sleep(2)  # the worker announces itself again (heartbeat, group)
        # Pooled connections to the old Redis are replaced on their first use: no new
        # request fails for having drawn one (before: a 503 for most of them).
        again = burst()
        assert [r.status_code for r in again] == [200] * 8, [r.text for r in again]
        wait_healthy(base_url, process, 60)


def test_a_sigkilled_supervisor_takes_every_child_with_it_at_once(
    bundled_model_dir: Path,
) -> None:
    """kill -9 of `conveyor serve`: the kernel SIGTERMs each child (PR_SET_PDEATHSIG). Its
    Redis dies with it, so a drain could deliver nothing: the API ends its streams with
    503 `shutting_down` and every child exits within seconds, not after --drain-timeout
    (30 s; before: 30-50 s of a worker generating into a dead Redis, the port still held)."""
    port = free_port()
    env = server_env(bundled_model_dir, "")
    del env["CONVEYOR_REDIS_URL"]  # the embedded redis-server, which dies with serve
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "conveyor.cli", "serve"),
            *("--port", str(port), "--host", "127.0.0.1", "--drain-timeout", "30"),
        ],
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process, STARTUP_TIMEOUT)
        warmup = {"model": "smollm2", "prompt": "Hi", "max_tokens": 3}
        assert httpx.post(f"{base_url}/v1/completions", json=warmup, timeout=60).is_success
        descendants = _children(process.pid)
        assert len(descendants) >= 3  # redis-server, worker, api
        result: dict = {}

        def long_stream() -> None:
            body = {**warmup, "max_tokens": 1500, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as r:
                result["stream"] = [line for line in r.iter_lines() if line.startswith("data: ")]

        thread = threading.Thread(target=long_stream)
        thread.start()
        time.sleep(1.5)
        process.kill()
        killed = time.monotonic()
        thread.join(timeout=60)
        *tokens, error, done = result["stream"]
        assert len(tokens) > 1 and done == "data: [DONE]"
        assert json.loads(error.removeprefix("data: "))["error"]["code"] == "shutting_down"
        while any(_alive(p) for p in descendants) and time.monotonic() - killed < 20:
            time.sleep(0.1)
        assert not [p for p in descendants if _alive(p)]
        assert time.monotonic() - killed < 15
    finally:
        process.kill()
        for pid in _children(process.pid):
            os.kill(pid, signal.SIGKILL)
