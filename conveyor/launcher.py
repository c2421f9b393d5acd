"""`conveyor serve`: the whole system as one process tree.

The supervisor brings the SQLite schema up to date (a PostgreSQL one must
already be), starts an embedded redis-server (unless `--redis-url` points at
one), then the engine workers (one, or `--data-parallel-size` of them, a GPU
each), the API and a batch worker (Celery) as child processes, each the same
`conveyor` CLI as in a production deployment, configured through `CONVEYOR_*`
env vars derived from this process's settings. Ctrl-C / SIGTERM drains: the
batch worker hands its batches back, the API stops accepting and finishes
in-flight requests, then the workers, then Redis. A child that crashes is
restarted (a worker's unfinished requests are reclaimed from Redis by the
janitor); one that keeps crashing stops the whole tree. Nothing is ever left
behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from conveyor.child_process import CONFIGURATION_ERROR, spawn
from conveyor.db.database_errors import schema_failure_at_start
from conveyor.embedded_redis import EmbeddedRedis
from conveyor.redis_wait import redacted, redis_answers_at_start
from conveyor.served_names import mark_expected_known
from conveyor.settings import Settings
from engine.chat_template_source import read_chat_template
from engine.generation_defaults import check_source
from engine.loader import check_local_tokenizer

logger = logging.getLogger(__name__)

# A stopping child gets --drain-timeout to finish its work plus this long to close down
# before a kill: the API ends what is still open with an error once the drain is over
# (5 s for those to go out), then settles rate limits (up to 5 s) and flushes its
# request logs, the billing rows, which a kill would lose.
_STOP_MARGIN_SECONDS = 15.0
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0


def settings_env(settings: Settings) -> dict[str, str]:
    """Express explicitly set settings as `CONVEYOR_*` env vars for child processes."""
    env: dict[str, str] = {}
    # Each child names itself: a shared instance id would make the API and the
    # worker one participant on the bus.
    for name in settings.model_fields_set - {"instance_id"}:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list | dict):
            value = json.dumps(value)  # how pydantic-settings reads complex fields back
        env[f"CONVEYOR_{name.upper()}"] = str(value)
    return env


def _spreads_over_gpus(settings: Settings) -> bool:
    """Whether --data-parallel-size asks for a GPU per worker (not one worker, not CPU)."""
    return settings.data_parallel_size > 1 and not (settings.device or "").startswith("cpu")


def visible_gpus(settings: Settings) -> int:
    """How many GPUs `--data-parallel-size` may spread workers over (0: none, or not asked)."""
    if not _spreads_over_gpus(settings):
        return 0
    import torch  # only here: the supervisor otherwise never loads it

    return torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES


def worker_device_env(settings: Settings, rank: int, gpus: int) -> dict[str, str]:
    """With --data-parallel-size N, worker `rank` sees only GPU `rank` (of those in
    CUDA_VISIBLE_DEVICES, if set), vLLM's data-parallel placement, and must use it; with
    no GPU at all (or --device cpu) the workers share the CPU, each with its part of it."""
    size = settings.data_parallel_size
    if size == 1:
        return {}
    if _spreads_over_gpus(settings) and gpus > 0:
        if gpus < size:
            raise ValueError(f"--data-parallel-size {size} needs as many GPUs; {gpus} are visible")
        listed = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [d.strip() for d in listed.split(",") if d.strip()] or [str(i) for i in range(gpus)]
        return {"CUDA_VISIBLE_DEVICES": ids[rank], "CONVEYOR_DEVICE": "cuda"}
    if settings.device and not settings.device.startswith("cpu"):
        raise ValueError(f"--device {settings.device}: no GPU is visible here")
    env = {"CONVEYOR_DEVICE": "cpu"}
    if settings.cpu_threads is None:
        env["CONVEYOR_CPU_THREADS"] = str(cpu_threads_each(size))
    return env


def worker_seed_env(settings: Settings, rank: int) -> dict[str, str]:
    """With --data-parallel-size N, worker `rank` seeds its generator with --seed + rank:
    with one seed, identical unseeded requests that reach two workers at the same point
    would be sampled identically."""
    if settings.data_parallel_size == 1:
        return {}
    return {"CONVEYOR_SEED": str(settings.seed + rank)}


def cpu_threads_each(workers: int) -> int:
    """Each of `workers` engines' share of the CPUs this process may run on: torch's
    default, a thread per core in every worker, would put N threads on each core."""
    usable = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )  # the CPUs this process may run on (Linux); elsewhere all of them
    return max(1, (usable or 1) // workers)


def _numbered(role: str, count: int) -> list[str]:
    """Children's names: the role alone for one, `role-i` for each of several."""
    return [role] if count == 1 else [f"{role}-{i}" for i in range(count)]


def listening_socket(settings: Settings) -> socket.socket:
    """One socket for all API processes (--api-server-count): the kernel hands each
    connection to whichever of them accepts first. A --uds path replaces a stale socket
    file left by an earlier run, as uvicorn does."""
    if settings.uds:
        path = settings.uds
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o666)  # as uvicorn leaves its own: a proxy as another user connects
        server.listen(2048)
    else:
        host = settings.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = socket.create_server((host, settings.port), family=family, backlog=2048)
    server.set_inheritable(True)
    return server


def with_bound_port(settings: Settings, server: socket.socket) -> Settings:
    """--port 0 lets the kernel pick a free port: the one it picked is what the batch
    worker calls and the start-up line names (port 0 would have aimed the worker at :0)."""
    if settings.uds or settings.port != 0:
        return settings
    return settings.model_copy(update={"port": server.getsockname()[1]})


def check_local_files(settings: Settings) -> None:
    """Files the flags name on this machine: missing ones stop start-up here, in a line,
    rather than in a worker after the API is up."""
    if settings.tokenizer is not None:
        check_local_tokenizer(settings.tokenizer)
    check_source(settings.generation_config)
    if settings.chat_template is not None:
        read_chat_template(settings.chat_template)
    settings.check_listen_files()


@dataclass
class Supervisor:
    settings: Settings
    # GPUs the data-parallel workers go to (visible_gpus); 0: they share the CPU.
    gpus: int = 0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    # With --api-server-count N > 1: the listening socket the N API processes share.
    api_socket: socket.socket | None = None
    stopping: bool = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            # Mistakes first, each one line: the database, then the port. The supervisor
            # listens before any model loads: a port in use is one line (not an API
            # restarted until it gives up), and an API process restarted after a crash
            # takes over the same socket, its backlog kept.
            database_url = self.settings.resolved_database_url
            # Before any child: on SQLite this makes or upgrades the schema (see prepare_schema).
            failure = schema_failure_at_start(database_url)
            if failure is not None:
                return failure
            try:
                self.api_socket = listening_socket(self.settings)
            except OSError as exc:
                logger.error("cannot listen %s: %s", self.settings.api_address, exc)
                return CONFIGURATION_ERROR
            self.settings = with_bound_port(self.settings, self.api_socket)
            redis_url = self.settings.redis_url
            if redis_url is None:
                self.redis = EmbeddedRedis().start()
                redis_url = self.redis.url
            elif (
                not redis_answers_at_start(redis_url, stopping=lambda: self.stopping)
                and not self.stopping
            ):
                # A --redis-url that never answers (a typo) would otherwise restart children
                # for ever: each waits as long, so they never exit fast enough to be given up.
                return 1
            if self.stopping:  # Ctrl-C while Redis started or was waited for: start nothing
                return 0
            # Before the API starts: requests for the models get 503 while they load, not 404.
            mark_expected_known(self.settings, redis_url)
            env = {
                **os.environ,
                **settings_env(self.settings),
                "CONVEYOR_REDIS_URL": redis_url,
                "CONVEYOR_DATABASE_URL": database_url,
            }
            if self.settings.resolved_service_key is None:
                # The batch worker's key to the API, made up for this process tree.
                env["CONVEYOR_SERVICE_KEY"] = secrets.token_urlsafe(32)
            api_env = {**env, "CONVEYOR_API_SOCKET_FD": str(self.api_socket.fileno())}
            for rank, name in enumerate(self.worker_names):
                placement = worker_device_env(self.settings, rank, self.gpus)
                self._spawn(
                    name, ["worker"], {**env, **placement, **worker_seed_env(self.settings, rank)}
                )
            for name in self.api_names:
                self._spawn(name, ["api"], api_env)
            self._spawn("batch-worker", ["batch-worker"], env)
            logger.info(
                "conveyor serve: API %s, redis %s, database %s",
                self.settings.api_address,
                redacted(redis_url),
                make_url(database_url).render_as_string(hide_password=True),
            )
            return self._watch()
        finally:
            self._shutdown()

    @property
    def worker_names(self) -> list[str]:
        return _numbered("worker", self.settings.data_parallel_size)

    @property
    def api_names(self) -> list[str]:
        return _numbered("api", self.settings.api_server_count)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "conveyor.cli", *args]
        self.commands[name] = (command, env)
        self.children[name] = self._start(name, command, env)

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        shared = self.api_socket is not None and name in self.api_names
        env = {**env, "CONVEYOR_SUPERVISOR_PID": str(os.getpid())}
        return spawn(command, env=env, pass_fds=(self.api_socket.fileno(),) if shared else ())

    def _watch(self) -> int:
        while not self.stopping:
            redis_exit = self.redis.exit_code if self.redis is not None else None
            if redis_exit is not None and not self._restart_redis(redis_exit):
                return redis_exit or 1
            for name, child in list(self.children.items()):
                code = child.poll()
                if code is None or self.stopping:
                    continue
                if code == CONFIGURATION_ERROR:
                    # What it was told cannot work; a restart would be told the same.
                    logger.error("%s cannot start as configured; stopping everything", name)
                    return code
                if not self._may_restart(name, code):
                    return code or 1
                logger.error("%s exited with code %s; restarting it", name, code)
                command, env = self.commands[name]
                self.children[name] = self._start(name, command, env)
            time.sleep(0.2)
        return 0

    def _restart_redis(self, code: int) -> bool:
        """A new, empty embedded redis-server on the same port; False when it keeps
        failing. The API ends the requests Redis lost with an error; the workers announce
        themselves again (their streams and groups are gone)."""
        assert self.redis is not None
        logger.error(
            "embedded redis-server exited with code %s; restarting it (requests it held "
            "that no worker is running end with an error)",
            code,
        )
        while self._may_restart("redis-server", code):
            try:
                self.redis.restart()
                return True
            except (RuntimeError, TimeoutError, OSError) as exc:
                logger.error("embedded redis-server did not start again: %s", exc)
                time.sleep(0.5)
        return False

    def _may_restart(self, name: str, code: int) -> bool:
        """Count a restart of `name`; False (and logged) when it keeps exiting."""
        now = time.monotonic()
        recent = [t for t in self.restarts.get(name, []) if now - t < _RESTART_WINDOW]
        if len(recent) >= _MAX_RESTARTS:
            logger.error("%s keeps exiting (code %s); stopping everything", name, code)
            return False
        self.restarts[name] = [*recent, now]
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            # A second Ctrl-C: the children run in their own process groups, so only we
            # can pass it on; what uvicorn and the workers promise ("again to exit at once").
            logger.warning("received %s again: stopping everything at once", name)
            for child in self.children.values():
                if child.poll() is None:
                    child.kill()
            return
        logger.info("received %s: draining (again to stop at once)", name)
        self.stopping = True

    def _shutdown(self) -> None:
        # Our copy of the shared listening socket goes first: while we held it, the kernel
        # kept accepting connections that no draining API process would ever answer.
        if self.api_socket is not None:
            self.api_socket.close()
        # The batch worker first (it stops feeding lines and hands its batches back), then
        # the API (stop accepting, finish in-flight), then the engine worker, then Redis.
        # Engine workers drain side by side.
        for names in (["batch-worker"], self.api_names, self.worker_names):
            running = {
                name: child
                for name in names
                if (child := self.children.get(name)) is not None and child.poll() is None
            }
            for child in running.values():
                child.send_signal(signal.SIGTERM)
            allowed = self.settings.drain_timeout + _STOP_MARGIN_SECONDS
            deadline = time.monotonic() + allowed
            for name, child in running.items():
                try:
                    child.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in %.0f s; killing it", name, allowed)
                    child.kill()
                    child.wait()
        if self.redis is not None:
            self.redis.stop()


def run_serve(settings: Settings) -> int:
    gpus = visible_gpus(settings)
    try:  # before anything starts: what the children would only find out later
        for rank in range(settings.data_parallel_size):
            worker_device_env(settings, rank, gpus)
        check_local_files(settings)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return CONFIGURATION_ERROR
    if settings.data_parallel_size > 1 and gpus == 0:
        size = settings.data_parallel_size
        logger.info(
            "%d engine workers share the CPU, each computing with threads: %d%s",
            size,
            settings.cpu_threads or cpu_threads_each(size),
            "" if settings.cpu_threads else " (--cpu-threads to choose)",
        )
    if settings.ssl_cert_reqs == 2 and settings.batch_api_url is None:
        logger.warning(
            "--ssl-cert-reqs 2 asks every client for a certificate, and the batch worker "
            "has none: batch jobs cannot reach the API"
        )
    return Supervisor(settings, gpus).run()
