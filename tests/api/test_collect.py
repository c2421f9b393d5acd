"""collect_all when the client leaves: every reader is aborted and nothing is logged as an error."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import pytest

from api.collect import ClientGone, collect_all


class SilentReader:
    """A reader whose worker never answers."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.finished = False
        self.closed = False

    def close(self) -> bool:
        closed, self.closed = self.closed, True
        return not closed

    async def __aiter__(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None  # pragma: no cover - never reached


class RecordingRouter:
    def __init__(self) -> None:
        self.aborted: list[str] = []

    def abort_soon(self, request_ids: Iterable[str]) -> None:
        self.aborted.extend(request_ids)


class GoneRequest:
    async def is_disconnected(self) -> bool:
        return True


def test_a_departed_client_aborts_every_reader_without_an_unretrieved_error() -> None:
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        router = RecordingRouter()
        readers = [SilentReader("a"), SilentReader("b")]
        with pytest.raises(ClientGone):
            await collect_all(cast(Any, GoneRequest()), cast(Any, router), cast(Any, readers))
        assert router.aborted == ["a", "b"]
        assert all(r.closed for r in readers)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    assert errors == []
