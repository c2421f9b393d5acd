"""Start and stop the HTTP servers `benchmarks.serve --compare` measures.

Each system under test runs as a child process on a free localhost port, with
its output in a log file (so a server that fails to start can say why), and is
stopped with SIGTERM so it drains the way it would in production. Children get
their own session: a Ctrl-C at the benchmark's terminal reaches the benchmark
only, which then stops them in order instead of racing them.

Two systems live here:
- `conveyor serve`: the full stack (embedded Redis, one worker, the API).
- `transformers serve --continuous-batching`: Hugging Face's own
  OpenAI-compatible server on the same weights, the external reference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# A server that has not answered /health in this long is reported as failed.
DEFAULT_STARTUP_TIMEOUT_S = 300.0
# How long a SIGTERMed server may drain before it is killed.
_STOP_TIMEOUT_S = 30.0


class TargetError(RuntimeError):
    """A system under test could not be started; the message says why (log tail included)."""


def free_port() -> int:
    """A localhost TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(threads: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The benchmark's environment plus the thread cap every system must share.

    On a small shared CPU box, torch's default of one thread per core loses
    badly to contention (a busy neighbour turns a 1 s generate into 20 s), so
    a fair comparison pins every system to the same `OMP_NUM_THREADS`.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """One running server: its process, URL and log file."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    scratch: list[Path] = field(default_factory=list)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> float:
        """Poll GET /health until it answers 200; returns the seconds it took.

        Raises TargetError if the process exits or the deadline passes, with the
        tail of the server's log so the reason is visible in the benchmark output.
        """
        root = self.base_url.removesuffix("/v1")
        start = time.monotonic()
        deadline = start + timeout_s
        last = "no answer yet"
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise TargetError(
                        f"{self.name} exited with code {code} before it was healthy:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    response = client.get(f"{root}/health")
                    if response.status_code == 200:
                        return time.monotonic() - start
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
        raise TargetError(
            f"{self.name} not healthy after {timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait for the drain, then SIGKILL the child's own process group.

        The log file is removed after a clean stop and kept (for a look) otherwise.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                # The group is the one this benchmark created with start_new_session.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)
        if self.stopped_cleanly:
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    @property
    def stopped_cleanly(self) -> bool:
        """Exited 0, or died of the SIGTERM it was sent (uvicorn under click does)."""
        return self.process.returncode in (0, -signal.SIGTERM)


def _launch(name: str, command: list[str], env: dict[str, str], port: int) -> ServerProcess:
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        prefix=f"bench-{name}-", suffix=".log", delete=False
    )
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log_file.close()
    return ServerProcess(name, process, f"http://127.0.0.1:{port}/v1", Path(log_file.name))


def start_conveyor(
    *, device: str, dtype: str, threads: int | None, extra_args: list[str] | None = None
) -> ServerProcess:
    """`conveyor serve` with the bundled model, on a free port, from this interpreter."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "conveyor.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        device,
        "--dtype",
        dtype,
        *(extra_args or []),
    ]
    return _launch("conveyor", command, child_env(threads), port)


def transformers_serve_command() -> list[str]:
    """The `transformers` CLI of this environment, or TargetError saying what is missing.

    transformers 5.x exposes the server as `transformers serve` (click app in
    `transformers.cli.transformers`); it needs fastapi, uvicorn and openai.
    """
    missing = [m for m in ("transformers", "fastapi", "uvicorn", "openai") if not _has(m)]
    if missing:
        raise TargetError(f"transformers serve needs {', '.join(missing)} (not installed)")
    script = Path(sys.executable).with_name("transformers")
    if script.exists():
        return [str(script)]
    found = shutil.which("transformers")
    if found:
        return [found]
    if _has("transformers.cli.transformers"):
        return [sys.executable, "-m", "transformers.cli.transformers"]
    raise TargetError("no `transformers` CLI found (transformers < 5 has no `serve`)")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def transformers_model_folder(model_dir: Path) -> Path:
    """A scratch view of `model_dir` that transformers serve can load: the same files.

    conveyor's dequantized GGUF folder has no `architectures` in config.json
    (conveyor picks its model class from `model_type`), and transformers serve
    indexes `config.architectures[0]`. So the weights and tokenizer are
    symlinked unchanged and only config.json is rewritten with the causal-LM
    class for its `model_type`; the data directory itself is never touched.
    """
    config = json.loads((model_dir / "config.json").read_text())
    scratch = Path(tempfile.mkdtemp(prefix="bench-hf-model-"))
    for item in model_dir.iterdir():
        if item.name != "config.json":
            (scratch / item.name).symlink_to(item.resolve())
    if not config.get("architectures"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
        if arch is None:
            shutil.rmtree(scratch, ignore_errors=True)
            raise TargetError(f"no causal-LM class for model_type {config.get('model_type')!r}")
        config["architectures"] = [arch]
    (scratch / "config.json").write_text(json.dumps(config, indent=2))
    return scratch


def start_transformers(
    model_dir: Path,
    *,
    device: str,
    dtype: str,
    threads: int | None,
    kv_blocks: int | None = None,
    block_size: int = 16,
) -> ServerProcess:
    """`transformers serve --continuous-batching` pinned to `model_dir`, offline.

    The model is given as FORCE_MODEL so it loads before /health answers and
    every request is served by it; HF_HUB_OFFLINE keeps it off the network.
    """
    command = transformers_serve_command()
    folder = transformers_model_folder(model_dir)
    port = free_port()
    command += [
        "serve",
        str(folder),
        "--continuous-batching",
        "--device",
        device,
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--cb-block-size",
        str(block_size),
    ]
    if kv_blocks is not None:
        command += ["--cb-num-blocks", str(kv_blocks)]
    env = child_env(threads, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    server = _launch("transformers-serve", command, env, port)
    server.scratch.append(folder)
    return server
