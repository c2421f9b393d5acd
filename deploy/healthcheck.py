#!/usr/bin/env python3
"""The conveyor image's HEALTHCHECK, for whichever role the container runs.

One image runs every role, so the check finds the conveyor processes in the
container and asks each what it is. `api` and `serve` must answer 200 on
/health (Redis answers and every served model has a live worker); `worker` and
`batch-worker` listen on no port and are healthy while they run (a worker's
liveness is its heartbeat in Redis, which the API's /health reports). With
`--ready` (Kubernetes' worker probes) a worker must also have beaten lately: its
heartbeat thread touches a beat file (conveyor/beat_file.py) once the model is
loaded and announced, and on every beat after. Host and
port (or the --uds socket) are worked out as the process itself worked them
out: its argv parsed by conveyor's own CLI parser, over its own CONVEYOR_*
environment.

Exit status 0 healthy, 1 unhealthy (what Docker expects); one line says why.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HTTP_ROLES = ("api", "serve")


@dataclass(frozen=True)
class Found:
    pid: int
    role: str
    health_url: str | None
    # The Unix socket the API listens on (--uds), which health_url's host stands for.
    uds: str | None = None
    # A worker's beat file, and how old its last beat may be (--ready).
    beat: Path | None = None
    beat_max_age: float = 0.0


def conveyor_args(cmdline: list[str]) -> list[str] | None:
    """The CLI arguments of a conveyor process (console script or `-m conveyor.cli`)."""
    for index, arg in enumerate(cmdline[:2]):
        if Path(arg).name == "conveyor":
            return cmdline[index + 1 :]
        if arg == "-m" and cmdline[index + 1 : index + 2] == ["conveyor.cli"]:
            return cmdline[index + 2 :]
    return None


def _read_nul_list(path: Path) -> list[str]:
    return [os.fsdecode(part) for part in path.read_bytes().split(b"\0") if part]


def processes(proc: Path) -> Iterator[tuple[int, list[str], dict[str, str], Path | None]]:
    """(pid, argv, environ, working directory) of every process we may read; others' are
    skipped (and a working directory we may not read is None)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = _read_nul_list(entry / "cmdline")
            environ = dict(
                item.split("=", 1) for item in _read_nul_list(entry / "environ") if "=" in item
            )
        except OSError:  # exited meanwhile, or another user's
            continue
        cwd = entry / "cwd"
        yield int(entry.name), cmdline, environ, cwd.resolve() if cwd.is_dir() else None


def describe(
    pid: int, args: list[str], environ: dict[str, str], cwd: Path | None = None
) -> Found | None:
    """What the process is and where its /health answers. Relative paths on its command
    line (--config, --uds) are read from its own working directory, `cwd`, as it read them."""
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        return _describe(pid, args, environ)


def _describe(pid: int, args: list[str], environ: dict[str, str]) -> Found | None:
    from conveyor.cli import parse_command_line, settings_from_args

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = parse_command_line(args)  # --config FILE's port and host included
    except SystemExit:
        return None  # not a conveyor command line after all
    if parsed.command not in (*HTTP_ROLES, "worker"):
        return Found(pid, parsed.command, None)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        settings = settings_from_args(parsed)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if parsed.command == "worker":
        from conveyor.beat_file import beat_file

        # Three missed beats, and never under 10 s: a busy host delays a thread.
        age = max(3 * settings.heartbeat_interval, 10.0)
        return Found(pid, "worker", None, beat=beat_file(pid, environ), beat_max_age=age)
    if settings.uds:
        url = f"{settings.api_scheme}://localhost/health"
        return Found(pid, parsed.command, url, os.path.abspath(settings.uds))
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return Found(pid, parsed.command, f"{settings.api_scheme}://{host}:{settings.port}/health")


def find(proc: Path) -> list[Found]:
    found = []
    for pid, cmdline, environ, cwd in processes(proc):
        args = conveyor_args(cmdline)
        if args is not None and (item := describe(pid, args, environ, cwd)) is not None:
            found.append(item)
    return found


def _unchecked_tls() -> ssl.SSLContext:
    """Over --ssl-certfile's HTTPS, no certificate check: it names the public host, and
    this is loopback."""
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    return unchecked


class _UnixConnection(http.client.HTTPConnection):
    """HTTP(S) to an API listening on a Unix socket (--uds)."""

    def __init__(self, path: str, timeout: float, tls: bool) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path_ = path
        self.tls = tls

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path_)
        self.sock = (
            _unchecked_tls().wrap_socket(sock, server_hostname="localhost") if self.tls else sock
        )


def probe_unix(url: str, path: str, timeout: float) -> str | None:
    """None when /health on the socket at `path` answers 200, else why not."""
    where = f"unix:{path}"
    connection = _UnixConnection(path, timeout, tls=url.startswith("https:"))
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        if response.status == 200:
            return None
        detail = response.read(300).decode("utf-8", "replace")
        return f"{where} answered {response.status}: {detail}"
    except OSError as exc:
        return f"{where}: {exc}"
    finally:
        connection.close()


def probe(url: str, timeout: float) -> str | None:
    """None when the endpoint answers 200, else why not."""
    # No proxy: an HTTP(S)_PROXY in the container's environment must not see 127.0.0.1.
    unchecked = _unchecked_tls()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=unchecked)
    )
    try:
        with opener.open(url, timeout=timeout) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace")
        return f"{url} answered {exc.code}: {detail}"
    except OSError as exc:
        return f"{url}: {exc}"


def beat_problem(item: Found, now: float) -> str | None:
    """None when a worker has beaten within its limit, else why not."""
    if item.beat is None:
        return None
    try:
        age = now - item.beat.stat().st_mtime
    except OSError:
        return f"worker {item.pid} has not beaten yet (loading its model?)"
    if age > item.beat_max_age:
        return f"worker {item.pid} last beat {age:.0f} s ago"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help="procfs to look in")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds per HTTP probe")
    parser.add_argument(
        "--ready",
        action="store_true",
        help="workers must have loaded their model and beaten lately (Kubernetes' probes)",
    )
    options = parser.parse_args(argv)
    found = find(options.proc)
    if not found:
        print("unhealthy: no conveyor process is running")
        return 1
    if options.ready:
        now = time.time()
        for item in found:
            if (problem := beat_problem(item, now)) is not None:
                print(f"unhealthy: {problem}")
                return 1
    roles = ", ".join(sorted({item.role for item in found}))
    targets = {(item.health_url, item.uds) for item in found if item.health_url}
    for url, uds in sorted(targets, key=str):
        problem = (
            probe(url, options.timeout) if uds is None else probe_unix(url, uds, options.timeout)
        )
        if problem is not None:
            print(f"unhealthy: {problem}")
            return 1
    print(f"healthy: {roles}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
