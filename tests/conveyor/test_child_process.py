"""Children of `conveyor serve` die with it, and know when it is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conveyor.child_process import supervisor_gone


def test_a_process_not_started_by_serve_never_thinks_its_supervisor_gone() -> None:
    assert not supervisor_gone(None)


def test_the_supervisor_is_gone_once_the_parent_is_another_process() -> None:
    assert not supervisor_gone(os.getppid())
    assert supervisor_gone(os.getpid())  # what a reparented orphan sees: not its parent


def test_a_child_gets_sigterm_when_its_parent_dies() -> None:
    """A middle process spawns a sleeper and is SIGKILLed; the kernel ends the sleeper."""
    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from conveyor.child_process import spawn; "
            "child = spawn([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(child.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert middle.stdout is not None
    sleeper = int(middle.stdout.readline())
    middle.kill()
    middle.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(sleeper, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(sleeper, 9)
        raise AssertionError("the child outlived its SIGKILLed parent")
