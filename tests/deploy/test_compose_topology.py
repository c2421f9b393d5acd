"""The docker compose topology, started for real without Docker.

Every process comes from docker-compose.yml: redis-server with the redis service's own
flags (the system's Redis 7, as the service's image is), a throwaway PostgreSQL, then each conveyor
service's `command:` run through the image's entrypoint script, with the environment a
container would get (the Dockerfile's ENV, the env file — its example stands in — and the
service's `environment:`). Only addresses change: Docker's service names become loopback
ports, the data dir a temporary one (its `files/` shared by the API and the batch worker
as the compose volume is), and two API replicas get two ports, as `--scale api=2` would.

Then an operator's first steps (a project and a key, with the CLI) and a client's: a chat
completion through each API replica and a small batch (upload on one replica, lines run
through the other), all with the openai SDK; and a clean SIGTERM drain of everything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from conveyor.embedded_redis import free_port

from .conftest import (
    COMPOSE_ENV_EXAMPLE,
    DOCKERFILE,
    ENTRYPOINT,
    runtime_env,
    service_command,
    service_env,
)

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer

STARTUP_TIMEOUT = 240.0
BATCH_TIMEOUT = 240.0
API_REPLICAS = 2
# Docker's names for things, as the compose file and the env file use them.
SERVICE_HOSTS = ("//redis:", "@postgres:", "//api:")


@dataclass
class Topology:
    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def tails(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.root.glob("*.log"))
        )


def with_flags(command: list[str], values: dict[str, str]) -> list[str]:
    """The command with these flags' values replaced; each must already be there."""
    command = list(command)
    for flag, value in values.items():
        assert flag in command, f"{flag} not in {command}"
        command[command.index(flag) + 1] = value
    return command


def wait_for(check: Any, timeout: float, what: str, topology: Topology) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in topology.processes.items():
            if name != "migrate" and process.poll() is not None:
                raise AssertionError(f"{name} exited ({process.returncode})\n{topology.tails()}")
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{topology.tails()}")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    topology = Topology(tmp_path)
    try:
        yield topology
    finally:
        for process in topology.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def stop_all(topology: Topology, names: list[str]) -> dict[str, int]:
    """SIGTERM in compose's reverse dependency order; each must drain and exit by itself."""
    codes = {}
    for name in names:
        process = topology.processes[name]
        process.send_signal(signal.SIGTERM)
        try:
            codes[name] = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = process.wait()
    return codes


@pytest.mark.slow
def test_compose_topology_serves_chat_and_batches(
    compose: dict[str, Any],
    postgres_server: PostgresServer,
    redis7_binary: Path,
    bundled_model_dir: Path,
    topology: Topology,
) -> None:
    services = compose["services"]
    image_env = runtime_env(DOCKERFILE.read_text())

    # --- Redis, with the compose service's flags -------------------------------------
    redis_port = free_port()
    redis_command = service_command(services["redis"])
    assert redis_command[0] == "redis-server"
    redis_dir = topology.root / "redis"
    redis_dir.mkdir()
    # Only where it listens and keeps its files differ from the container's.
    local_flags = ["--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir)]
    redis_argv = [str(redis7_binary), *redis_command[1:], *local_flags]
    topology.start("redis", redis_argv, dict(os.environ))
    wait_for(lambda: redis_answers(redis_port), 20, "redis", topology)
    assert (redis_dir / "appendonlydir").exists() or list(redis_dir.glob("*.aof")), (
        "compose's redis flags must turn AOF on"
    )

    # --- the addresses Docker would provide -------------------------------------------
    database_url = postgres_server.create_database("compose")
    data_dir = topology.root / "data"
    (data_dir / "files").mkdir(parents=True)
    # The image's baked model cache: the test session's converted bundled model.
    (data_dir / "models").symlink_to(bundled_model_dir.parent)
    api_ports = [free_port() for _ in range(API_REPLICAS)]
    api_urls = [f"http://127.0.0.1:{port}" for port in api_ports]
    local = {
        "CONVEYOR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_BATCH_API_URL": api_urls[0],
        "CONVEYOR_DATA_DIR": str(data_dir),
    }
    # Where the entrypoint finds `conveyor`: this venv's, as the image's PATH has its own.
    host_keep = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "LANG") if k in os.environ}
    host_keep["PATH"] = f"{Path(sys.executable).parent}:{host_keep.get('PATH', '')}"

    def container_env(name: str) -> dict[str, str]:
        env = {k: v for k, v in image_env.items() if k not in ("PATH", "HOME")}
        env.update(service_env(services[name], COMPOSE_ENV_EXAMPLE))
        env.update({key: value for key, value in local.items() if key in env})
        leftover = [f"{k}={v}" for k, v in env.items() if any(h in v for h in SERVICE_HOSTS)]
        assert leftover == [], f"{name}: a Docker-only address would be used: {leftover}"
        return {**host_keep, **env}

    def entrypoint(*command: str) -> list[str]:
        return [str(ENTRYPOINT), *command]

    # --- migrate: one-shot, before anything that uses SQL ------------------------------
    migrate_env = container_env("migrate")
    migrate = topology.start(
        "migrate", entrypoint(*service_command(services["migrate"])), migrate_env
    )
    assert migrate.wait(timeout=120) == 0, topology.tails()

    # An operator's first steps, as `docker compose run --rm migrate projects create ...`.
    def cli(*args: str) -> Any:
        out = subprocess.run(
            entrypoint(*args), env=migrate_env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    project = cli("projects", "create", "compose-test")
    key = cli("keys", "create", "--project", project["id"], "--name", "topology")["value"]

    # --- the long-running services ------------------------------------------------------
    api_command = service_command(services["api"])
    for index, port in enumerate(api_ports):
        command = with_flags(api_command, {"--host": "127.0.0.1", "--port": str(port)})
        topology.start(f"api-{index + 1}", entrypoint(*command), container_env("api"))
    topology.start(
        "worker", entrypoint(*service_command(services["worker"])), container_env("worker")
    )
    topology.start(
        "batch-worker",
        entrypoint(*service_command(services["batch-worker"])),
        container_env("batch-worker"),
    )
    for url in api_urls:
        wait_for(lambda url=url: healthy(url), STARTUP_TIMEOUT, f"{url}/health", topology)

    # --- a chat completion through each replica -----------------------------------------
    clients = [
        openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        for url in api_urls
    ]
    for client in clients:
        (model,) = [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Name a planet."}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):  # tenancy is on: the env file's admin key
        openai.OpenAI(base_url=f"{api_urls[0]}/v1", api_key="nope", max_retries=0).models.list()

    # --- a small batch: uploaded on replica 2, its lines run through replica 1 -----------
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Count to {i + 1}."}],
                "max_tokens": 8,
                "temperature": 0,
            },
        }
        for i in range(3)
    ]
    client = clients[-1]
    uploaded = client.files.create(
        file=("batch.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def finished() -> Any:
        current = client.batches.retrieve(batch.id)
        return current if current.status in ("completed", "failed", "cancelled") else None

    batch = wait_for(finished, BATCH_TIMEOUT, f"batch {batch.id}", topology)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 0)
    output = [
        json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()
    ]
    assert sorted(o["custom_id"] for o in output) == [line["custom_id"] for line in lines]
    assert all(o["response"]["status_code"] == 200 for o in output)

    # --- docker compose stop: every role drains on SIGTERM and exits 0 ------------------
    codes = stop_all(
        topology, ["batch-worker", *(f"api-{i + 1}" for i in range(API_REPLICAS)), "worker"]
    )
    assert codes == dict.fromkeys(codes, 0), topology.tails()
    postgres_server.drop_database(database_url)
