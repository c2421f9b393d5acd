"""The image's entrypoint (deploy/docker-entrypoint.sh) and HEALTHCHECK (deploy/healthcheck.py),
run here as the image runs them.

The entrypoint runs under /bin/sh with stand-ins for `conveyor` and `conveyor-healthcheck`
on PATH that report what they were given. The healthcheck reads a fake /proc (the
processes a container could hold) and probes a real HTTP server.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer
from types import ModuleType
from typing import Protocol

import pytest

from conveyor.embedded_redis import free_port

from ..self_signed import self_signed_certificate
from .conftest import ENTRYPOINT, HEALTHCHECK

REPORTER = """#!/bin/sh
# Stand-in for {name}: prints what it was run with, as JSON, via python.
exec "{python}" -c '
import json, os, sys
print(json.dumps({{"name": "{name}", "pid": os.getpid(), "argv": sys.argv[1:],
                  "env": {{k: v for k, v in os.environ.items() if k.startswith("CONVEYOR_")}}}}))
' "$@"
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("conveyor", "conveyor-healthcheck"):
        script = bin_dir / name
        script.write_text(REPORTER.format(name=name, python=sys.executable))
        script.chmod(0o755)
    return bin_dir


def run_entrypoint(
    fake_bin: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    process = subprocess.Popen(
        [str(ENTRYPOINT), *args],
        env={**base, **(env or {}), "PATH": f"{fake_bin}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=30)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    result.pid = process.pid  # type: ignore[attr-defined]
    return result


def reported(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_entrypoint_is_executable_posix_sh() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


@pytest.mark.parametrize(
    ("args", "name", "argv"),
    [
        ((), "conveyor", ["serve"]),
        (("api", "--port", "9000"), "conveyor", ["api", "--port", "9000"]),
        (("worker",), "conveyor", ["worker"]),
        (("batch-worker",), "conveyor", ["batch-worker"]),
        (("db", "upgrade"), "conveyor", ["db", "upgrade"]),
        (("keys", "list"), "conveyor", ["keys", "list"]),
        (("--port", "9000"), "conveyor", ["serve", "--port", "9000"]),
        (("--log-level", "DEBUG", "api"), "conveyor", ["--log-level", "DEBUG", "api"]),
        (("healthcheck", "--timeout", "2"), "conveyor-healthcheck", ["--timeout", "2"]),
    ],
)
def test_roles_dispatch(fake_bin: Path, args: tuple[str, ...], name: str, argv: list[str]) -> None:
    result = run_entrypoint(fake_bin, *args)
    report = reported(result)
    assert (report["name"], report["argv"]) == (name, argv)
    # exec all the way: conveyor is the process the container started (it gets SIGTERM).
    assert report["pid"] == result.pid  # type: ignore[attr-defined]


def test_every_conveyor_command_is_dispatched(fake_bin: Path) -> None:
    """`docker compose run --rm migrate usage completions` and the like: each of the CLI's
    commands (and its top-level flags first) reaches conveyor, not the shell."""
    from conveyor.cli import build_parser

    parser = build_parser()
    (commands,) = [
        action.choices
        for action in parser._subparsers._group_actions  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction)
    ]
    for command in commands:
        assert reported(run_entrypoint(fake_bin, command))["argv"] == [command], command
    leading = ["--log-config-file", "/etc/c.json", "api"]
    assert reported(run_entrypoint(fake_bin, *leading))["argv"] == leading


def test_other_commands_run_as_given(fake_bin: Path) -> None:
    result = run_entrypoint(fake_bin, "sh", "-c", "echo plain $0", "shell")
    assert (result.returncode, result.stdout) == (0, "plain shell\n")


def test_secret_files_become_settings(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("s3cret-admin\n")
    (tmp_path / "db").write_text("postgresql://u:p@db/conveyor")
    report = reported(
        run_entrypoint(
            fake_bin,
            "api",
            env={
                "CONVEYOR_ADMIN_KEY_FILE": str(tmp_path / "admin"),
                "CONVEYOR_DATABASE_URL_FILE": str(tmp_path / "db"),
                "CONVEYOR_REDIS_URL": "redis://redis:6379/0",
            },
        )
    )
    assert report["env"] == {
        "CONVEYOR_ADMIN_KEY": "s3cret-admin",  # the editor's newline dropped
        "CONVEYOR_DATABASE_URL": "postgresql://u:p@db/conveyor",
        "CONVEYOR_REDIS_URL": "redis://redis:6379/0",
    }


def test_a_setting_named_file_is_left_as_it_is(fake_bin: Path, tmp_path: Path) -> None:
    """CONVEYOR_LOG_CONFIG_FILE names a file conveyor reads itself: not a secret file."""
    (tmp_path / "logging.json").write_text('{"version": 1}')
    env = {"CONVEYOR_LOG_CONFIG_FILE": str(tmp_path / "logging.json")}
    report = reported(run_entrypoint(fake_bin, "api", env=env))
    assert report["env"] == env


def test_every_setting_named_file_is_known_to_the_entrypoint() -> None:
    from conveyor.settings import Settings

    script = ENTRYPOINT.read_text()
    for name in Settings.model_fields:
        if name.endswith("_file"):
            assert f"CONVEYOR_{name.upper()}" in script, name


def test_secret_file_mistakes_stop_the_container(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("from-file")
    both = run_entrypoint(
        fake_bin,
        "api",
        env={"CONVEYOR_ADMIN_KEY_FILE": str(tmp_path / "admin"), "CONVEYOR_ADMIN_KEY": "inline"},
    )
    assert both.returncode == 64 and "both CONVEYOR_ADMIN_KEY and" in both.stderr
    missing = run_entrypoint(
        fake_bin, "api", env={"CONVEYOR_ADMIN_KEY_FILE": str(tmp_path / "absent")}
    )
    assert missing.returncode == 64 and "cannot read" in missing.stderr
    assert missing.stdout == ""  # conveyor never started


# --- the healthcheck -----------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> Iterator[ModuleType]:
    """deploy/healthcheck.py as a module (it is a script in the image, not a package)."""
    spec = importlib.util.spec_from_file_location("conveyor_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


class HealthAnswers(Protocol):
    status: int
    requests: list[str]


def health_handler(server: HealthAnswers) -> type[BaseHTTPRequestHandler]:
    """Answers GET with `server.status`, noting each path in `server.requests`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.requests.append(self.path)
            body = b'{"status": "ok"}' if server.status == 200 else b'{"error": "no worker"}'
            self.send_response(server.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    return Handler


class HealthServer:
    """A /health endpoint whose answer the test sets (over HTTPS with `tls`: cert, key)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.status = 200
        self.requests: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), health_handler(self))
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def fake_proc(
    root: Path,
    processes: dict[int, tuple[list[str], dict[str, str]]],
    cwds: dict[int, Path] | None = None,
) -> Path:
    """A procfs of these processes (argv, env), each in its `cwds` folder if given."""
    (root / "self").mkdir(parents=True)  # not a pid: skipped
    for pid, (argv, env) in processes.items():
        entry = root / str(pid)
        entry.mkdir()
        if cwds and pid in cwds:
            (entry / "cwd").symlink_to(cwds[pid])
        (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (entry / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    (root / "999").mkdir()  # a process that exited while we looked: no files
    return root


SCRIPT = ["/opt/venv/bin/python", "/opt/venv/bin/conveyor"]
MODULE = ["/opt/venv/bin/python", "-m", "conveyor.cli"]
SLEEP = (["sleep", "infinity"], {})


def check(healthcheck: ModuleType, proc: Path, capsys: pytest.CaptureFixture[str]) -> tuple:
    code = healthcheck.main(["--proc", str(proc), "--timeout", "2"])
    return code, capsys.readouterr().out.strip()


def test_api_is_healthy_when_health_answers_200(
    healthcheck: ModuleType,
    health_server: HealthServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy in the environment must not be asked for 127.0.0.1.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    port = str(health_server.port)
    proc = fake_proc(
        tmp_path / "proc",
        {
            1: ([*SCRIPT, "api"], {"CONVEYOR_PORT": port, "CONVEYOR_HOST": "0.0.0.0"}),
            7: SLEEP,
        },
    )
    assert check(healthcheck, proc, capsys) == (0, "healthy: api")
    assert health_server.requests == ["/health"]


def test_flags_win_over_env_as_in_conveyor(
    healthcheck: ModuleType,
    health_server: HealthServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*MODULE, "--log-level", "INFO", "serve", "--port", str(health_server.port)]
    proc = fake_proc(tmp_path / "proc", {1: (argv, {"CONVEYOR_PORT": "1"})})
    assert check(healthcheck, proc, capsys) == (0, "healthy: serve")


def test_the_port_of_a_config_file_is_probed(
    healthcheck: ModuleType,
    health_server: HealthServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "conveyor.yaml"
    config.write_text(f"port: {health_server.port}\nhost: 0.0.0.0\n")
    proc = fake_proc(tmp_path / "proc", {1: ([*SCRIPT, "api", "--config", str(config)], {})})
    assert check(healthcheck, proc, capsys) == (0, "healthy: api")
    assert health_server.requests == ["/health"]


def test_an_https_api_is_probed_over_tls(
    healthcheck: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ssl-certfile: the probe speaks HTTPS to loopback (the certificate names the
    public host, so it is not checked)."""
    cert, key = self_signed_certificate(tmp_path)
    server = HealthServer(tls=(cert, key))
    try:
        env = {"CONVEYOR_SSL_CERTFILE": str(cert), "CONVEYOR_SSL_KEYFILE": str(key)}
        proc = fake_proc(
            tmp_path / "proc", {1: ([*SCRIPT, "serve", "--port", str(server.port)], env)}
        )
        assert check(healthcheck, proc, capsys) == (0, "healthy: serve")
        assert server.requests == ["/health"]
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


class UnixHealthServer(ThreadingMixIn, UnixStreamServer):
    """/health on a Unix socket (--uds), answering `status`."""

    daemon_threads = True

    def __init__(self, path: Path, status: int = 200) -> None:
        self.status = status
        self.requests: list[str] = []
        super().__init__(str(path), health_handler(self))
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_an_api_on_a_unix_socket_is_probed_there(
    healthcheck: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api.sock"
    server = UnixHealthServer(path)
    try:
        proc = fake_proc(tmp_path / "proc", {1: ([*SCRIPT, "serve", "--uds", str(path)], {})})
        assert check(healthcheck, proc, capsys) == (0, "healthy: serve")
        assert server.requests == ["/health"]
        server.status = 503
        code, message = check(healthcheck, proc, capsys)
        assert code == 1 and f"unix:{path} answered 503" in message
    finally:
        server.shutdown()
        server.server_close()
    code, message = check(healthcheck, proc, capsys)  # nothing listens there now
    assert code == 1 and message.startswith(f"unhealthy: unix:{path}")


def test_relative_paths_are_the_processs_own(
    healthcheck: ModuleType,
    health_server: HealthServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--config conveyor.yaml` and `--uds api.sock` name files in the process's working
    directory, not the healthcheck's."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "conveyor.yaml").write_text(f"port: {health_server.port}\n")
    server = UnixHealthServer(home / "api.sock")
    try:
        proc = fake_proc(
            tmp_path / "proc",
            {
                1: ([*SCRIPT, "api", "--config", "conveyor.yaml"], {}),
                2: ([*SCRIPT, "serve", "--uds", "api.sock"], {}),
            },
            cwds={1: home, 2: home},
        )
        assert check(healthcheck, proc, capsys) == (0, "healthy: api, serve")
        assert health_server.requests == ["/health"] and server.requests == ["/health"]
    finally:
        server.shutdown()
        server.server_close()


def test_api_is_unhealthy_when_health_fails(
    healthcheck: ModuleType,
    health_server: HealthServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    health_server.status = 503
    proc = fake_proc(
        tmp_path / "proc", {1: ([*SCRIPT, "api", "--port", str(health_server.port)], {})}
    )
    code, message = check(healthcheck, proc, capsys)
    assert code == 1 and "answered 503" in message and "no worker" in message


def test_api_is_unhealthy_when_nothing_listens(
    healthcheck: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = fake_proc(tmp_path / "proc", {1: ([*SCRIPT, "api", "--port", str(free_port())], {})})
    code, message = check(healthcheck, proc, capsys)
    assert code == 1 and message.startswith("unhealthy: http://127.0.0.1:")


@pytest.mark.parametrize("role", ["worker", "batch-worker"])
def test_roles_without_http_are_healthy_while_running(
    healthcheck: ModuleType, role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # With compose's `init: true`, PID 1 is Docker's init and conveyor its child.
    proc = fake_proc(
        tmp_path / "proc", {1: (["/sbin/docker-init", "--"], {}), 7: ([*SCRIPT, role], {})}
    )
    assert check(healthcheck, proc, capsys) == (0, f"healthy: {role}")


def test_no_conveyor_process_is_unhealthy(
    healthcheck: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = fake_proc(
        tmp_path / "proc",
        {1: SLEEP, 2: (["ls", "/var/lib/conveyor"], {}), 3: ([*SCRIPT, "no-such-role"], {})},
    )
    assert check(healthcheck, proc, capsys) == (1, "unhealthy: no conveyor process is running")


def test_ready_needs_a_worker_that_has_beaten_lately(
    healthcheck: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kubernetes' worker probes (`--ready`): a worker still loading its model, or whose
    beat stopped, is not ready; one that beat lately is. Its beat file is found from its
    own environment (TMPDIR), as the worker placed it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp), "CONVEYOR_HEARTBEAT_INTERVAL": "1"}
    proc = fake_proc(tmp_path / "proc", {7: ([*SCRIPT, "worker"], env)})

    def ready() -> tuple:
        code = healthcheck.main(["--proc", str(proc), "--ready"])
        return code, capsys.readouterr().out.strip()

    assert check(healthcheck, proc, capsys) == (0, "healthy: worker")  # running is enough
    assert ready() == (1, "unhealthy: worker 7 has not beaten yet (loading its model?)")
    beat = tmp / "conveyor-worker-7.beat"
    beat.touch()
    assert ready() == (0, "healthy: worker")
    stale = time.time() - 300
    os.utime(beat, (stale, stale))
    code, line = ready()
    assert code == 1 and line.startswith("unhealthy: worker 7 last beat 30")
