"""Non-streaming requests: gather a request's replies into complete choices.

Also owns the one rule both response kinds share: a request that ends any way
but finished (client gone, error, timeout) is aborted on the workers, so an
abandoned generation never keeps a sequence and its KV blocks busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request

from api.quiet_futures import retrieve_error
from api.reply_router import ReplyReader, ReplyRouter, Restart
from conveyor.protocol import ReplyMessage, TokenLogprob, Usage

DISCONNECT_POLL_SECONDS = 0.5

T = TypeVar("T")


@dataclass
class ChoiceOutput:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def full_text(self) -> str:
        return "".join(self.text)


@dataclass
class Output:
    """Everything one submission (one prompt, n choices) produced."""

    choices: dict[int, ChoiceOutput] = field(default_factory=dict)
    usage: Usage | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # An embedding request's vector (base64 little-endian float32, as the worker sent it).
    embedding: str | None = None

    def reset(self) -> None:
        self.choices.clear()
        self.usage = None
        self.prompt_logprobs = None
        self.embedding = None

    def add(self, message: ReplyMessage) -> None:
        for delta in message.choices:
            choice = self.choices.setdefault(delta.index, ChoiceOutput())
            choice.text.append(delta.text)
            choice.token_ids.extend(delta.token_ids)
            if delta.logprobs:
                choice.logprobs.extend(delta.logprobs)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
                choice.stop_reason = delta.stop_reason
        if message.usage is not None:
            self.usage = message.usage
        if message.prompt_logprobs is not None:
            self.prompt_logprobs = message.prompt_logprobs
        if message.embedding is not None:
            self.embedding = message.embedding

    def choice(self, index: int) -> ChoiceOutput:
        return self.choices.get(index) or ChoiceOutput()

    def completion_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.completion_tokens
        return sum(len(c.token_ids) for c in self.choices.values())

    def cached_tokens(self) -> int:
        return self.usage.cached_tokens if self.usage is not None else 0


async def collect(reader: ReplyReader) -> Output:
    output = Output()
    async for item in reader:
        if isinstance(item, Restart):
            output.reset()
        else:
            output.add(item)
    return output


async def wait_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


async def collect_all(
    request: Request, router: ReplyRouter, readers: Sequence[ReplyReader]
) -> list[Output]:
    """Collect every reader's output, or abort them all when the client leaves or one fails."""
    try:
        return await until_disconnected(request, asyncio.gather(*(collect(r) for r in readers)))
    finally:
        finish(router, readers)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (and `work` cancelled) if the client leaves first."""
    return await unless(work, wait_disconnected(request), ClientGone)


async def unless(
    work: Awaitable[T], stop: Awaitable[object], stopped: Callable[[], Exception]
) -> T:
    """`work`'s result; if `stop` ends first, `work` is cancelled and `stopped()` raised
    (what `stop` itself raised, if it failed)."""
    task = asyncio.ensure_future(work)
    # Cancelled for a departed client, 3.11's gather ends with a CancelledError set as its
    # exception, which asyncio logs as an unretrieved ERROR when the future is collected.
    task.add_done_callback(retrieve_error)
    watcher = asyncio.ensure_future(stop)
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        watcher.result()
        raise stopped()
    finally:
        for future in (task, watcher):
            future.cancel()
        # Bounded: a task that swallowed its cancellation must not hold the response.
        await asyncio.wait({task, watcher}, timeout=1.0)


def finish(router: ReplyRouter, readers: Sequence[ReplyReader]) -> None:
    """Stop listening; abort on the workers whatever did not finish. Safe to call twice."""
    unfinished = [r.request_id for r in readers if r.close() and not r.finished]
    router.abort_soon(unfinished)
