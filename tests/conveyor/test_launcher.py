"""`conveyor serve`'s placement of data-parallel engine workers: GPU i for worker i."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.child_process import CONFIGURATION_ERROR
from conveyor.launcher import (
    Supervisor,
    check_local_files,
    cpu_threads_each,
    listening_socket,
    run_serve,
    settings_env,
    visible_gpus,
    with_bound_port,
    worker_device_env,
    worker_seed_env,
)
from conveyor.settings import Settings

from ..self_signed import self_signed_certificate


def test_one_worker_keeps_the_environment_as_it_is() -> None:
    assert worker_device_env(Settings(), 0, gpus=8) == {}
    assert Supervisor(Settings()).worker_names == ["worker"]
    assert visible_gpus(Settings()) == 0  # not even asked


def test_worker_i_sees_gpu_i_and_must_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings = Settings(data_parallel_size=3)
    assert Supervisor(settings).worker_names == ["worker-0", "worker-1", "worker-2"]
    assert [worker_device_env(settings, r, gpus=4) for r in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": str(r), "CONVEYOR_DEVICE": "cuda"} for r in range(3)
    ]
    # Of the GPUs the operator made visible, in their order.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,7")
    placed = [worker_device_env(settings, r, gpus=3)["CUDA_VISIBLE_DEVICES"] for r in range(3)]
    assert placed == ["4", "6", "7"]


def test_without_gpus_the_workers_share_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each gets its part of the CPUs: a thread per core in every worker oversubscribes
    each core (two workers on two cores ran bursts 2-4x slower)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert worker_device_env(Settings(data_parallel_size=2), 1, gpus=0) == {
        "CONVEYOR_DEVICE": "cpu",
        "CONVEYOR_CPU_THREADS": "4",
    }
    assert worker_device_env(Settings(data_parallel_size=3, device="cpu"), 1, gpus=2) == {
        "CONVEYOR_DEVICE": "cpu",
        "CONVEYOR_CPU_THREADS": "2",
    }
    assert cpu_threads_each(16) == 1  # never none
    # The operator's count, passed on with the other settings, is left alone.
    chosen = Settings(data_parallel_size=2, cpu_threads=3)
    assert worker_device_env(chosen, 0, gpus=0) == {"CONVEYOR_DEVICE": "cpu"}
    assert settings_env(chosen)["CONVEYOR_CPU_THREADS"] == "3"
    assert visible_gpus(Settings(data_parallel_size=2, device="cpu")) == 0
    with pytest.raises(ValueError, match="no GPU is visible"):
        worker_device_env(Settings(data_parallel_size=2, device="cuda"), 0, gpus=0)


def test_more_workers_than_gpus_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="2 are visible"):
        worker_device_env(Settings(data_parallel_size=3), 2, gpus=2)
    monkeypatch.setattr("conveyor.launcher.visible_gpus", lambda settings: 2)
    assert run_serve(Settings(data_parallel_size=3)) == 2  # before anything starts


def test_files_the_flags_name_are_checked_before_anything_starts(tmp_path: Path) -> None:
    """A missing tokenizer folder, generation config, chat template or certificate is one line at
    start-up, not a worker restarting until the supervisor gives up."""
    with pytest.raises(FileNotFoundError, match="--tokenizer /nonexistent"):
        check_local_files(Settings(tokenizer="/nonexistent"))
    check_local_files(Settings(tokenizer="org/tokenizer"))  # a hub id: the worker fetches it
    with pytest.raises(ValueError, match=r"no generation_config\.json"):
        check_local_files(Settings(generation_config=str(tmp_path)))
    missing = str(tmp_path / "cert.pem")
    with pytest.raises(FileNotFoundError, match="--ssl-certfile"):
        check_local_files(Settings(ssl_certfile=missing, ssl_keyfile=missing))
    with pytest.raises(FileNotFoundError, match="--chat-template"):
        check_local_files(Settings(chat_template=str(tmp_path / "template.jinja")))
    check_local_files(Settings(chat_template="{{ messages[0].content }}"))  # a literal one
    assert run_serve(Settings(tokenizer="/nonexistent")) == 2  # before Redis or any child
    assert run_serve(Settings(chat_template="/nonexistent/template.jinja")) == 2


def test_a_child_that_cannot_run_as_configured_stops_the_tree() -> None:
    """Exit status 2 (a configuration error) is not retried."""
    import subprocess
    import sys

    supervisor = Supervisor(Settings())
    command = [sys.executable, "-c", "raise SystemExit(2)"]
    supervisor.commands["worker"] = (command, {})
    supervisor.children["worker"] = subprocess.Popen(command)
    assert supervisor._watch() == 2
    assert supervisor.restarts == {}


def test_a_unix_socket_for_api_processes_that_share_it(tmp_path: Path) -> None:
    """--uds with --api-server-count: the supervisor binds the socket (replacing one an
    earlier run left behind) and the batch worker reaches the API through it."""
    path = tmp_path / "api.sock"
    settings = Settings(uds=str(path), api_server_count=2)
    for _ in range(2):  # the second time over the first one's leftover file
        server = listening_socket(settings)
        try:
            assert server.family == socket.AF_UNIX and path.is_socket()
            assert path.stat().st_mode & 0o777 == 0o666  # was the umask's 0755
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
        finally:
            server.close()
    assert (settings.resolved_batch_api_url, settings.batch_api_uds) == (
        "http://localhost",
        str(path),
    )
    elsewhere = Settings(uds=str(path), batch_api_url="https://api.example/")
    assert (elsewhere.resolved_batch_api_url, elsewhere.batch_api_uds) == (
        "https://api.example",
        None,
    )
    assert Settings(uds="~/api.sock").uds == str(Path("~/api.sock").expanduser())


def test_a_socket_path_that_cannot_work_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--uds .*its folder does not exist"):
        check_local_files(Settings(uds=str(tmp_path / "missing" / "api.sock")))
    with pytest.raises(ValueError, match="under 108 bytes"):
        Settings(uds="/tmp/" + "s" * 120)
    check_local_files(Settings(uds=str(tmp_path / "api.sock")))


class _DyingRedis:
    """An embedded redis-server that has died, and restarts as `starts` says."""

    def __init__(self, supervisor: Supervisor, starts: list[bool]) -> None:
        self.supervisor = supervisor
        self.starts = starts
        self.dead = True
        self.restarts = 0

    @property
    def exit_code(self) -> int | None:
        return 9 if self.dead else None

    def restart(self) -> _DyingRedis:
        self.restarts += 1
        if not self.starts.pop(0):
            raise RuntimeError("embedded redis-server exited at start: port in use")
        self.dead = False
        self.supervisor.stopping = True  # enough: end the watch loop
        return self


def test_a_dead_embedded_redis_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("conveyor.launcher.time.sleep", lambda _: None)
    supervisor = Supervisor(Settings())
    redis = _DyingRedis(supervisor, [False, True])  # the first try fails, the next works
    supervisor.redis = redis  # type: ignore[assignment]
    assert supervisor._watch() == 0
    assert redis.restarts == 2 and not redis.dead


def test_a_redis_that_cannot_start_again_stops_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("conveyor.launcher.time.sleep", lambda _: None)
    supervisor = Supervisor(Settings())
    redis = _DyingRedis(supervisor, [False] * 10)
    supervisor.redis = redis  # type: ignore[assignment]
    assert supervisor._watch() == 9
    assert redis.restarts == 5  # the restart budget, then everything stops


def test_a_database_that_cannot_be_used_stops_start_up_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before any child starts; it was a traceback from `prepare_schema`. A database
    that does not answer exits 1 (at boot it may come up: systemd restarts the unit), a
    URL that cannot work 2 (no restart mends it)."""
    url = "postgresql://conveyor:s3cretpw@127.0.0.1:1/conveyor"
    supervisor = Supervisor(Settings(redis_url="redis://127.0.0.1:1/0", database_url=url))
    with caplog.at_level(logging.ERROR):
        assert supervisor.run() == 1
    assert supervisor.children == {}
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith("database postgresql://conveyor:***@127.0.0.1:1/conveyor: ")
    caplog.clear()
    no_driver = Supervisor(Settings(redis_url="redis://127.0.0.1:1/0", database_url="nosuch://x"))
    with caplog.at_level(logging.ERROR):
        assert no_driver.run() == CONFIGURATION_ERROR
    assert no_driver.children == {}


def test_a_port_in_use_stops_start_up_before_any_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With one API process too: it bound the port itself, so a port in use was an API
    restarted five times, then exit 3, after the model had loaded for nothing."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = Settings(
            host="127.0.0.1",
            port=port,
            redis_url="redis://127.0.0.1:1/0",
            database_url=f"sqlite:///{tmp_path}/conveyor.db",
        )
        supervisor = Supervisor(settings)
        with caplog.at_level(logging.ERROR):
            assert supervisor.run() == CONFIGURATION_ERROR
    assert supervisor.children == {}
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith(f"cannot listen on http://127.0.0.1:{port}: ")
    assert "Address already in use" in error


def test_a_certificate_and_key_that_do_not_pair_stop_start_up_in_one_line(
    tmp_path: Path,
) -> None:
    """They were uvicorn's SSLError in every API process, each restarted in vain."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cert, key = self_signed_certificate(tmp_path / "one")
    _, other_key = self_signed_certificate(tmp_path / "two")
    check_local_files(Settings(ssl_certfile=str(cert), ssl_keyfile=str(key)))
    for certfile, keyfile in ((cert, other_key), (cert, cert)):
        with pytest.raises(ValueError, match=r"--ssl-certfile .*: cannot serve TLS with them"):
            check_local_files(Settings(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)))
    assert run_serve(Settings(ssl_certfile=str(cert), ssl_keyfile=str(other_key))) == 2


def test_a_second_signal_stops_the_children_at_once() -> None:
    """Ctrl-C again: the children run in their own process groups and only hear us."""
    supervisor = Supervisor(Settings())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor.children["worker"] = child
    supervisor._on_signal(signal.SIGINT, None)
    assert supervisor.stopping and child.poll() is None  # the first one drains
    supervisor._on_signal(signal.SIGINT, None)
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_a_redis_url_that_never_answers_stops_start_up_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Children would each wait as long and be restarted for ever (never fast enough to
    be given up): the supervisor waits once, before starting any, and exits 1."""
    from conveyor import redis_wait

    monkeypatch.setattr(redis_wait, "REDIS_STARTUP_WAIT", 0.3)
    private = {"database_url": f"sqlite:///{tmp_path}/conveyor.db", "host": "127.0.0.1", "port": 0}
    supervisor = Supervisor(Settings(redis_url="redis://:secret@127.0.0.1:1/0", **private))
    with caplog.at_level(logging.ERROR):
        assert supervisor.run() == 1
    assert supervisor.children == {}
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("cannot reach Redis at redis://:***@127.0.0.1:1/0: ")
    caplog.clear()
    stopped = Supervisor(Settings(redis_url="redis://127.0.0.1:1/0", **private))
    stopped.stopping = True  # Ctrl-C while waiting: no wait out, a clean exit, no error
    monkeypatch.setattr(redis_wait, "REDIS_STARTUP_WAIT", 60)
    with caplog.at_level(logging.ERROR):
        assert stopped.run() == 0
    assert stopped.children == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_data_parallel_workers_sample_from_streams_of_their_own() -> None:
    """--seed + rank: one seed would sample identical unseeded requests alike on each."""
    assert worker_seed_env(Settings(seed=5), 0) == {}
    two = Settings(seed=5, data_parallel_size=2, device="cpu")
    assert [worker_seed_env(two, rank) for rank in (0, 1)] == [
        {"CONVEYOR_SEED": "5"},
        {"CONVEYOR_SEED": "6"},
    ]


def test_port_0_serves_on_the_port_the_kernel_picked(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The batch worker calls the API where it really listens (it was sent to :0), and
    the start-up line says where that is."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path}/conveyor.db",
    )
    supervisor = Supervisor(settings)
    spawned: dict[str, dict[str, str]] = {}
    monkeypatch.setattr(supervisor, "_spawn", lambda name, args, env: spawned.update({name: env}))
    bound: list[int] = []

    def watch() -> int:  # the children are up: where does the shared socket listen?
        assert supervisor.api_socket is not None
        bound.append(supervisor.api_socket.getsockname()[1])
        return 0

    monkeypatch.setattr(supervisor, "_watch", watch)
    with caplog.at_level(logging.INFO):
        assert supervisor.run() == 0
    (port,) = bound
    assert port != 0
    assert spawned["batch-worker"]["CONVEYOR_PORT"] == str(port)
    assert supervisor.settings.resolved_batch_api_url == f"http://127.0.0.1:{port}"
    assert any(f"API on http://127.0.0.1:{port}," in r.getMessage() for r in caplog.records)
    named = Settings(host="127.0.0.1", port=8123)
    with socket.create_server(("127.0.0.1", 0)) as other:
        assert with_bound_port(named, other) is named
