"""Start child processes that cannot outlive their parent.

On Linux each child asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), so even a SIGKILLed `conveyor serve` leaves no orphan
redis-server, worker or API behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
# A child's exit status for "configured so that it cannot run" (argparse's usage error):
# `conveyor serve` stops at it, where any other exit is retried.
CONFIGURATION_ERROR = 2


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return set_pdeathsig


def supervisor_gone(supervisor_pid: int | None) -> bool:
    """This process was started by `conveyor serve` (pid `supervisor_pid`), which is gone.

    Then the embedded Redis and the other children are going too, so a drain could
    deliver nothing: in-flight work should end at once, not in `--drain-timeout`.
    """
    return supervisor_pid is not None and os.getppid() != supervisor_pid


def spawn(command: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` whose child is terminated if this process dies.

    The child gets its own session, so a terminal's Ctrl-C reaches only the
    parent, which then stops its children in order (API, worker, Redis)
    instead of all of them at once.

    Call it from a thread that lives as long as the child should: the kernel sends
    the death signal when the *thread* that spawned the child ends, not only the
    process (prctl(2)), so a child spawned from a short-lived thread dies with it.
    """
    return subprocess.Popen(  # type: ignore[call-overload]
        command, preexec_fn=_die_with_parent(), start_new_session=True, **kwargs
    )
