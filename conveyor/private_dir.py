"""Folders conveyor creates for its data are readable only by the user it runs as.

The data dir holds the SQLite database (key digests, usage, prompts under
`--log-prompts`), tenants' uploaded files and batch results. Under systemd the
units' `UMask=0027` keeps them private; a `conveyor serve` from a shell, with the
usual umask 022, would leave them readable by every local user. Folders that
already exist are left as the operator made them.
"""

from __future__ import annotations

from pathlib import Path

PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents, each owner-only (`Path.mkdir` would give
    the parents the umask's default)."""
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
