"""LocalFileStorage: atomic writes, deletes, and keys that cannot leave the storage root."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conveyor.file_storage import (
    FileTooLarge,
    InvalidKey,
    LocalFileStorage,
    delete_unlisted_async,
    open_async,
    read_async,
    save_async,
)


@pytest.fixture()
def storage(tmp_path: Path) -> LocalFileStorage:
    return LocalFileStorage(tmp_path / "files")


def names(storage: LocalFileStorage) -> list[str]:
    """Everything under the root, hidden temporaries included."""
    if not storage.root.exists():
        return []
    return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*"))


def test_round_trip_and_size(storage: LocalFileStorage) -> None:
    data = [b"hello ", "wörld\n".encode(), b"\x00\xff"]
    assert storage.save_bytes_iter("file-abc", iter(data)) == sum(map(len, data))
    assert storage.exists("file-abc")
    with storage.open("file-abc") as f:
        assert f.read() == b"".join(data)
    assert names(storage) == ["file-abc"]


def test_root_is_created_on_first_write_only(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "deep" / "files")
    assert not storage.exists("file-x")
    assert not (tmp_path / "deep").exists()
    storage.save_bytes_iter("file-x", [b"x"])
    assert (tmp_path / "deep" / "files" / "file-x").read_bytes() == b"x"


def test_a_half_written_file_is_invisible_until_commit(storage: LocalFileStorage) -> None:
    writer = storage.writer("file-abc")
    writer.write(b"partial")
    assert not storage.exists("file-abc")
    with pytest.raises(FileNotFoundError):
        storage.open("file-abc")
    assert writer.commit() == len(b"partial")
    assert storage.exists("file-abc")
    writer.abort()  # after commit: nothing to discard
    assert storage.exists("file-abc")


def test_failed_write_leaves_nothing_and_keeps_the_old_bytes(storage: LocalFileStorage) -> None:
    storage.save_bytes_iter("file-abc", [b"old"])

    def broken() -> Iterator[bytes]:
        yield b"new, half"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        storage.save_bytes_iter("file-abc", broken())
    with storage.open("file-abc") as f:
        assert f.read() == b"old"  # replaced atomically or not at all
    assert names(storage) == ["file-abc"]


def test_max_bytes_discards_the_file(storage: LocalFileStorage) -> None:
    with pytest.raises(FileTooLarge):
        storage.save_bytes_iter("file-big", [b"x" * 6, b"y" * 6], max_bytes=10)
    assert names(storage) == []
    assert storage.save_bytes_iter("file-fits", [b"x" * 10], max_bytes=10) == 10


def test_delete(storage: LocalFileStorage) -> None:
    storage.save_bytes_iter("file-abc", [b"x"])
    assert storage.delete("file-abc") is True
    assert not storage.exists("file-abc")
    assert storage.delete("file-abc") is False
    assert names(storage) == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "../escape",
        "a/../../escape",
        "/etc/passwd",
        "a//b",
        ".hidden",
        "a/.tmp",
        "a\\b",
        "a b",
        "a\x00b",
        "~/x",
        "x" * 201,
    ],
)
def test_keys_cannot_leave_the_root(storage: LocalFileStorage, key: str) -> None:
    for call in (
        lambda: storage.save_bytes_iter(key, [b"x"]),
        lambda: storage.open(key),
        lambda: storage.delete(key),
        lambda: storage.exists(key),
    ):
        with pytest.raises(InvalidKey):
            call()


def test_a_symlink_out_of_the_root_is_refused(storage: LocalFileStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    storage.root.mkdir(parents=True)
    os.symlink(outside, storage.root / "link")
    with pytest.raises(InvalidKey):
        storage.save_bytes_iter("link/file", [b"x"])
    assert list(outside.iterdir()) == []


def test_nested_keys(storage: LocalFileStorage) -> None:
    storage.save_bytes_iter("proj_1/file-a", [b"a"])
    assert storage.exists("proj_1/file-a")
    assert names(storage) == ["proj_1", "proj_1/file-a"]


def test_async_save_and_read(storage: LocalFileStorage) -> None:
    big = os.urandom(3 << 20)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 100_000):
            yield big[start : start + 100_000]

    async def run() -> bytes:
        assert await save_async(storage, "file-big", chunks()) == len(big)
        opened = await open_async(storage, "file-big")
        return b"".join([chunk async for chunk in read_async(opened, chunk_size=1 << 20)])

    assert asyncio.run(run()) == big


def test_async_save_discards_on_failure(storage: LocalFileStorage) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * (2 << 20)  # past one batched write, so a temporary exists
        raise ValueError("client sent garbage")

    async def too_big() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 1000

    with pytest.raises(ValueError, match="garbage"):
        asyncio.run(save_async(storage, "file-a", failing()))
    with pytest.raises(FileTooLarge):
        asyncio.run(save_async(storage, "file-b", too_big(), max_bytes=4500))
    assert names(storage) == []


def test_unlisted_bytes_are_deleted_and_a_failure_is_only_logged(
    storage: LocalFileStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    storage.save_bytes_iter("file-gone", [b"x"])
    asyncio.run(delete_unlisted_async(storage, "file-gone"))
    assert not storage.exists("file-gone")

    def broken(key: str) -> bool:
        raise PermissionError(f"read-only: {key}")

    monkeypatch.setattr(storage, "delete", broken)
    asyncio.run(delete_unlisted_async(storage, "file-stuck"))  # does not raise
    assert "file-stuck" in caplog.text
