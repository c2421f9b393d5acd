"""A throwaway PostgreSQL cluster for the test session, so SQL is tested on the real thing.

The server binaries come from the OS (Debian's `postgresql` package puts them
under /usr/lib/postgresql/<major>/bin; `scripts/install-system-packages.sh`
installs it). PostgreSQL refuses to run as root, so under root every server
command runs as the `postgres` system user, in a temp dir that user owns.
Durability is switched off: the cluster lives for one session only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: the GPU checks run tests where psycopg is not installed
    import psycopg

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
START_TIMEOUT_S = 60

# Speed over durability: the data dies with the session anyway.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


class PostgresUnavailable(RuntimeError):
    """No usable server binaries here: the caller decides between skip and fail."""


def _major(bin_dir: Path) -> float:
    try:
        return float(bin_dir.parent.name)
    except ValueError:
        return -1.0


def find_bin_dir() -> Path:
    """The newest Debian install, else whatever `initdb` is on PATH (Fedora, Homebrew...)."""
    debian = sorted(
        (p.parent for p in DEBIAN_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()),
        key=_major,
    )
    if debian:
        return debian[-1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under "
        f"{DEBIAN_ROOT}/*/bin or on PATH; run scripts/install-system-packages.sh as root"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One cluster in a temp dir on a free localhost port; `stop()` removes every trace."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root but there is no `{SUPERUSER}` system user to run "
                    "PostgreSQL as (it refuses root)"
                ) from None
            self.run_as = SUPERUSER
        self.root: Path | None = None
        self.port = 0

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # subprocess's user=/group= drop root in the child, like `runuser -u postgres`.
        kwargs: dict[str, Any] = {}
        if self.run_as:
            kwargs = {"user": self.run_as, "group": self.run_as, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                + self._log_tail()
            )
        return result

    def _log_tail(self) -> str:
        log = self.root / "server.log" if self.root else None
        if log and log.exists():
            return "\nserver.log:\n" + log.read_text(errors="replace")[-4000:]
        return ""

    def start(self) -> PostgresServer:
        # Not pytest's tmp_path: its parents are 0700 root, which `postgres` cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        if self.run_as:
            shutil.chown(self.root, self.run_as, self.run_as)
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
            self._start_on_free_port()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_on_free_port(self) -> None:
        # Another process may grab the port between probing and binding: retry a few.
        for attempt in range(3):
            self.port = _free_port()
            options = " ".join(
                [f"-p {self.port}", f"-k {self.root}"]
                + [f"-c {key}={value}" for key, value in SERVER_SETTINGS.items()]
            )
            try:
                self._run(
                    "pg_ctl",
                    "start",
                    "--pgdata",
                    str(self.data_dir),
                    "--log",
                    str(self.root / "server.log"),
                    "--wait",
                    "--timeout",
                    str(START_TIMEOUT_S),
                    "--options",
                    options,
                )
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL in the form users write (`Database` picks psycopg 3 itself)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        )

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop it even if a test left connections open (FORCE, PostgreSQL 13+)."""
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
