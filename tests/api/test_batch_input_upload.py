"""A batch input's checks: the `.jsonl` name, and UTF-8 followed across chunk boundaries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from api.batch_input_upload import Utf8Watch, check_batch_filename
from api.errors import ApiError

TEXT = '{"custom_id": "é-世界-🚀"}\n'.encode()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _watched(data: bytes, size: int) -> tuple[bytes, Utf8Watch]:
    watch = Utf8Watch()

    async def read() -> bytes:
        return b"".join([chunk async for chunk in watch.passing(_chunks(data, size))])

    return asyncio.run(read()), watch


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_characters_split_between_chunks_are_utf8(size: int) -> None:
    passed, watch = _watched(TEXT * 3, size)
    assert passed == TEXT * 3  # the bytes go on unchanged
    watch.check()


@pytest.mark.parametrize(
    "data",
    [
        TEXT + b"\xff" + TEXT,  # a byte no UTF-8 text has
        "café".encode("latin-1"),
        TEXT + "🚀".encode()[:2],  # cut by the file's end
        "\ud800".encode("utf-8", "surrogatepass"),  # a lone surrogate
    ],
)
@pytest.mark.parametrize("size", [1, 4, 64])
def test_bytes_that_are_not_utf8_are_refused(data: bytes, size: int) -> None:
    passed, watch = _watched(data, size)
    assert passed == data
    with pytest.raises(ApiError) as refused:
        watch.check()
    assert (refused.value.status, refused.value.body()["error"]["code"]) == (
        400,
        "invalid_file_format",
    )


@pytest.mark.parametrize("name", ["in.jsonl", "IN.JSONL", "a.b.jsonl"])
def test_jsonl_names_pass(name: str) -> None:
    check_batch_filename(name)


@pytest.mark.parametrize("name", ["in.json", "in.txt", "jsonl", "in.jsonl.gz"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ApiError) as refused:
        check_batch_filename(name)
    assert refused.value.body()["error"]["param"] == "file"
