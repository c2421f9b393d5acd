"""End-to-end fixtures: the real `conveyor serve` process tree, reached over HTTP."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from conveyor.embedded_redis import EmbeddedRedis, free_port

STARTUP_TIMEOUT = 180.0
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here starts a real process tree (seconds each): all are `slow`, so
    `make test-fast` leaves them to `make test`."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.slow)


@dataclass
class Server:
    base_url: str
    redis_url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


def wait_healthy(
    base_url: str,
    process: subprocess.Popen[bytes],
    timeout: float,
    verify: bool | ssl.SSLContext = True,
    uds: Path | None = None,
) -> None:
    """`uds`: the server listens on this Unix socket (--uds), not on base_url's port."""
    deadline = time.monotonic() + timeout
    transport = httpx.HTTPTransport(uds=str(uds), verify=verify) if uds else None
    with httpx.Client(verify=verify, transport=transport, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} during startup")
            try:
                if client.get(f"{base_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{base_url} not healthy after {timeout:.0f} s")


def server_env(bundled_model_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """A server's env: the bundled model, a small KV cache, its own fresh SQLite database."""
    database = Path(tempfile.mkdtemp(prefix="conveyor-e2e-db-")) / "conveyor.db"
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": f"sqlite:///{database}",
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_MODEL": str(bundled_model_dir),
        "CONVEYOR_SERVED_MODEL_NAME": "smollm2",
        "CONVEYOR_MAX_MODEL_LEN": "2048",
        "CONVEYOR_KV_CACHE_MEMORY": str(512 << 20),
        "CONVEYOR_MAX_NUM_SEQS": "32",
        "CONVEYOR_JANITOR_IDLE": "3",
        "CONVEYOR_JANITOR_INTERVAL": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def stop(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def serving(
    bundled_model_dir: Path,
    *flags: str,
    scheme: str = "http",
    verify: bool | ssl.SSLContext = True,
    uds: Path | None = None,
    **extra_env: str,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A whole `conveyor serve` tree (with these extra command-line `flags`) on its own
    embedded Redis; (base_url, process). `verify`: how to trust its HTTPS certificate;
    `uds`: serve on this Unix socket (--uds), which base_url's host then stands for.

    It must stop cleanly (exit 0) when the test is done.
    """
    port = free_port()
    env = server_env(bundled_model_dir, "", **extra_env)
    del env["CONVEYOR_REDIS_URL"]
    command = [sys.executable, "-m", "conveyor.cli", "serve", "--port", str(port)]
    if uds is not None:
        flags = (*flags, "--uds", str(uds))
    process = subprocess.Popen([*command, "--host", "127.0.0.1", *flags], env=env)
    base_url = f"{scheme}://localhost" if uds else f"{scheme}://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process, STARTUP_TIMEOUT, verify, uds)
        yield base_url, process
    finally:
        assert stop(process) == 0


@pytest.fixture(scope="session")
def e2e_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def server(bundled_model_dir: Path, e2e_redis: EmbeddedRedis) -> Iterator[Server]:
    """`conveyor serve` against a test-owned Redis, so tests can add workers to it."""
    port = free_port()
    env = server_env(bundled_model_dir, e2e_redis.url)
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "serve", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process, STARTUP_TIMEOUT)
        yield Server(base_url, e2e_redis.url, process, env)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def dev_server(bundled_model_dir: Path) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    """A plain `conveyor serve` tree in development mode (vLLM's VLLM_SERVER_DEV_MODE),
    shared by the modules that need no other flag (pause, aborts, tokens in): clients for
    its operator endpoints and its API."""
    with (
        serving(bundled_model_dir, VLLM_SERVER_DEV_MODE="1") as (base_url, _),
        operator_clients(base_url) as clients,
    ):
        yield clients


@contextmanager
def operator_clients(base_url: str) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    """An HTTP client for a server's operator endpoints and the SDK for its API (no
    retries: a failure shows as it is), closed on leaving."""
    with (
        httpx.Client(base_url=base_url, timeout=120) as http,
        openai.OpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120
        ) as sdk,
    ):
        yield http, sdk
