"""Data conveyor creates is closed to other local users, whatever the umask.

The data dir holds the SQLite database (key digests, usage, prompts under
`--log-prompts`), tenants' uploaded files and batch results. A `conveyor serve`
or `conveyor db upgrade` from a shell, with the usual umask 022, would leave them
readable by every local user. Only the "other" bits are withheld: the owner and
the group keep what the umask gives them (systemd's units, `UMask=0027` and a
0750 state dir, let the service's group read, for backups). Folders and files
that already exist are left as the operator made them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o770  # then the umask: 0750 under the usual 022
PRIVATE_FILE_MODE = 0o660


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents, each without access for others
    (`Path.mkdir` would give the parents the umask's default)."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)  # exist_ok: a racing process
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")


def touch_private_file(path: Path) -> None:
    """Create `path` empty, without access for others, unless it exists (an empty file
    is an empty SQLite database, which SQLite then fills with that mode)."""
    if not path.exists():  # opening an existing read-only one for writing would fail
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE))


def create_private_file(path: Path) -> BinaryIO:
    """Open a new file (an error if it exists) for writing, without access for others."""
    return os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE), "wb")
