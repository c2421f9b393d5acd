"""Where the bytes of uploaded and generated files live, behind a small interface.

The API (async) and the Celery batch workers (sync) share one storage class,
so its methods are plain blocking calls; async code reaches them through a
thread with `save_async` and `read_async`. Keys are names conveyor makes
(a file id), never paths a client supplied, and are checked anyway so no key
can leave the storage root. `LocalFileStorage` keeps files under
`<data_dir>/files/`; an object store can implement `FileStorage` later.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio
import anyio.to_thread

from conveyor.private_dir import create_private_file, make_private_dir

# One or more `/`-separated segments of safe characters, none starting with a dot: so no
# `..`, no absolute path, no hidden name (temporary files start with a dot).
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}){0,3}")

logger = logging.getLogger(__name__)

# Thread hops are batched to about this many bytes, so a big upload costs few of them.
ASYNC_WRITE_BYTES = 1 << 20
READ_CHUNK_BYTES = 1 << 20


class InvalidKey(ValueError):
    """A storage key that could name something outside the storage root."""


class FileTooLarge(ValueError):
    """The bytes being saved passed the caller's limit; nothing was kept."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"file is larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


class FileWriter(Protocol):
    """A file being written: invisible under its key until `commit`; `abort` discards it."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> int:
        """Publish the bytes under the key at once (atomically); returns their size."""
        ...

    def abort(self) -> None:
        """Discard what was written; safe to call more than once and after `commit`."""
        ...


class FileStorage(Protocol):
    """Blocking file storage: callable from sync workers, or from async code in a thread."""

    def writer(self, key: str) -> FileWriter: ...

    def save_bytes_iter(
        self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> int:
        """Write all of `chunks` under `key`, atomically; returns the size.

        Raises FileTooLarge (keeping nothing) once more than `max_bytes` arrive.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """The stored bytes for reading; FileNotFoundError if the key holds nothing."""
        ...

    def delete(self, key: str) -> bool:
        """Remove the bytes; False if there were none."""
        ...

    def exists(self, key: str) -> bool: ...


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise InvalidKey(f"invalid storage key: {key!r}")
    return key


class _LocalWriter:
    """A temporary file beside its final name (same filesystem, so the rename is atomic)."""

    def __init__(self, final: Path) -> None:
        self.final = final
        make_private_dir(final.parent)
        self.temp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
        self._file: BinaryIO | None = create_private_file(self.temp)  # closed by commit/abort
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("write to a finished file")
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> int:
        if self._file is None:
            raise ValueError("commit of a finished file")
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            file.close()
            os.replace(self.temp, self.final)
        except BaseException:
            file.close()
            self.temp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.final.parent)
        return self.size

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.temp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; best effort where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalFileStorage:
    """Files on the local disk under `root` (the data dir's `files/`), created on first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        """The file a key names; checked to stay under the root even through symlinks."""
        path = self.root / check_key(key)
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise InvalidKey(f"storage key escapes the storage root: {key!r}")
        return path

    def writer(self, key: str) -> FileWriter:
        return _LocalWriter(self.path(key))

    def save_bytes_iter(
        self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> int:
        writer = self.writer(key)
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLarge(max_bytes)
                writer.write(chunk)
            return writer.commit()
        finally:
            writer.abort()

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()


async def save_async(
    storage: FileStorage,
    key: str,
    chunks: AsyncIterable[bytes],
    *,
    max_bytes: int | None = None,
) -> int:
    """`save_bytes_iter` for async producers: blocking writes run in a thread, batched.

    On any failure, a FileTooLarge or the producer's own exception, the partial
    file is discarded (even when the task is being cancelled) and the error
    propagates.
    """
    writer = await anyio.to_thread.run_sync(storage.writer, key)
    pending: list[bytes] = []
    buffered = 0
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise FileTooLarge(max_bytes)
            pending.append(chunk)
            buffered += len(chunk)
            if buffered >= ASYNC_WRITE_BYTES:
                data, pending, buffered = b"".join(pending), [], 0
                await anyio.to_thread.run_sync(writer.write, data)
        if pending:
            await anyio.to_thread.run_sync(writer.write, b"".join(pending))
        return await anyio.to_thread.run_sync(writer.commit)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.abort)


async def open_async(storage: FileStorage, key: str) -> BinaryIO:
    """Open before answering, so a missing file is an error status, not a cut-off body."""
    return await anyio.to_thread.run_sync(storage.open, key)


async def delete_unlisted_async(storage: FileStorage, key: str) -> None:
    """Delete the bytes of a file whose row is already gone, logging instead of failing.

    The row goes first (committed), so nothing lists a file whose bytes are missing; if the
    bytes then can't be deleted, the caller's work is still done and the leftover is logged.
    """
    try:
        await anyio.to_thread.run_sync(storage.delete, key)
    except OSError:
        logger.exception("a deleted file's bytes (key %s) could not be deleted", key)


async def read_async(file: BinaryIO, chunk_size: int = READ_CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Stream an opened file's bytes, reading in a thread; closes the file when done or dropped."""
    try:
        while chunk := await anyio.to_thread.run_sync(file.read, chunk_size):
            yield chunk
    finally:
        file.close()
