"""A worker's beat file: touched by its heartbeat thread, read by the image's healthcheck
(`conveyor-healthcheck --ready`), so an orchestrator can tell a worker that has loaded
its model and beats from one still loading, or whose beat has stopped.

Why a file and not the Redis heartbeat: a probe that asked Redis would fail every worker
at once when Redis blips, and the orchestrator would restart them all, reloading every
model for nothing. The file says only what the worker process itself is doing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path


def beat_file(pid: int, environ: Mapping[str, str] | None = None) -> Path:
    """Where worker `pid` (whose environment is `environ`) keeps its beat: its temp dir."""
    env = os.environ if environ is None else environ
    return Path(env.get("TMPDIR") or "/tmp") / f"conveyor-worker-{pid}.beat"


def touch(path: Path) -> None:
    """Record a beat now; a temp dir that cannot be written only costs the probe."""
    with contextlib.suppress(OSError):
        path.touch()


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
