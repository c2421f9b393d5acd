"""Test doubles for the API tests: a scripted engine worker and a uvicorn server in a thread.

The fake worker speaks the real bus protocol (XREADGROUP on the model's
lane streams, PUBLISH ReplyMessages, heartbeat + tokenizer hash + known-model key,
result key, abort channel) but generates scripted tokens, so API behaviour can
be tested in milliseconds, including the failures a real worker rarely shows
on demand (lost messages, re-delivery, silence, errors).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from redis.exceptions import RedisError, ResponseError

from api.app import create_app
from api.request_submitter import Submission
from api.server import uvicorn_config
from conveyor.bus import (
    INTERACTIVE_LANE,
    LANES,
    TOKENIZER_DIGEST_FIELD,
    TOKENIZER_FILES,
    WORKER_GROUP,
    BusNames,
)
from conveyor.embedded_redis import free_port
from conveyor.protocol import (
    ChoiceDelta,
    ErrorInfo,
    GenerateRequest,
    ReplyMessage,
    TokenLogprob,
    Usage,
)
from conveyor.runtime_lora import RuntimeLoRA
from conveyor.settings import Settings
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

SCRIPT_TEXT = " one two three four five six seven eight nine ten"
CACHED_TOKENS = 3


@functools.cache
def shared_tokenizer(model_dir: Path) -> Tokenizer:
    """One tokenizer per folder for every fake worker of the run: loading one takes ~0.35 s
    and a run starts a few hundred workers. Workers only encode and decode with it."""
    return Tokenizer.load(model_dir)


def tokenizer_hash(
    model_dir: Path,
    max_model_len: int,
    eos_token_id: int | list[int] = 2,
    generation: dict[str, Any] | None = None,
    **config: Any,
) -> dict[str, str]:
    """What a worker publishes under `names.tokenizer(model)` (`generation`: its served
    sampling defaults; `config`: more config.json)."""
    fields = {
        name: (model_dir / name).read_text(encoding="utf-8")
        for name in TOKENIZER_FILES
        if (model_dir / name).is_file()
    }
    fields["generation_config.json"] = json.dumps(generation or {})
    fields["config.json"] = json.dumps(
        {"eos_token_id": eos_token_id, "max_model_len": max_model_len, **config}
    )
    digest = hashlib.sha256()
    for name in sorted(fields):
        digest.update(name.encode() + b"\0" + fields[name].encode() + b"\0")
    fields[TOKENIZER_DIGEST_FIELD] = digest.hexdigest()
    return fields


@dataclass
class FakeWorker:
    """A scripted worker for one model. Set `behaviour` before a request to pick a failure.

    behaviours: "normal"; "gap" (drops seq 1, writes the result); "restart" (attempt 1
    sends two tokens, attempt 2 starts over); "silent" (never answers); "error"
    (a worker error); "slow" (a token every 50 ms, until aborted); "paused" (heartbeat
    only, never reads the stream); "stalled" (two tokens, then nothing: never finishes,
    acks or hears an abort, as a worker hung mid-request).
    """

    redis_url: str
    names: BusNames
    model: str
    model_dir: Path
    max_model_len: int = 256
    instance: str = "worker-1"
    behaviour: str = "normal"
    # LoRA adapters it announces (name -> path), as a worker started with --lora-modules.
    loras: dict[str, str] = field(default_factory=dict)
    # "pooling": an embedding model's worker (answers with fake_embedding of the prompt),
    # whose vectors may be cut to these `dimensions` (a matryoshka model; () : none).
    runner: str = "generate"
    matryoshka_dimensions: tuple[int, ...] = ()
    # A pooling worker of a sequence classifier: these labels are published and each
    # prompt gets fake_label_probs.
    labels: tuple[str, ...] = ()
    # A classifier_from_token cross-encoder's (texts of a pair joined, not pair-encoded).
    concat_pairs: bool = False
    # An encoder's token types (BERT's 2: a pair's second text is marked).
    type_vocab_size: int = 0
    # Publishes its model as writing harmony messages (gpt-oss's), as a real worker does.
    harmony: bool = False
    # Other names it serves the model under (--served-model-name A B).
    aliases: tuple[str, ...] = ()
    # The model as it was given (a folder, a hub id), which real workers report.
    root: str | None = None
    # Its served sampling defaults (--generation-config) and more of its config.json.
    generation: dict[str, Any] = field(default_factory=dict)
    published_config: dict[str, Any] = field(default_factory=dict)
    received: list[GenerateRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    # Where each request it read was: request id -> (stream, entry id).
    entries: dict[str, tuple[str, str]] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _requests: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.tokenizer = shared_tokenizer(Path(self.model_dir))
        self.set_script(SCRIPT_TEXT)

    def _shape(self) -> dict[str, Any]:
        if self.harmony:
            return {"harmony": True}
        if self.runner != "pooling":
            return {}
        return {
            "hidden_size": len(fake_embedding_values([1], None)),
            "is_matryoshka": bool(self.matryoshka_dimensions),
            "matryoshka_dimensions": list(self.matryoshka_dimensions),
            "labels": list(self.labels),
            "concat_pairs": self.concat_pairs,
            "type_vocab_size": self.type_vocab_size,
        }

    def _text(self, tokens: list[int], skip_special_tokens: bool) -> str:
        """As the engine's detokenizer: special tokens dropped unless the request keeps
        them, and an end-of-sequence token's text never in the output."""
        kept = [t for t in tokens if t not in self.tokenizer.eos_token_ids]
        return self.tokenizer.decode(kept, skip_special_tokens=skip_special_tokens)

    def set_script(self, text: str) -> None:
        """What the worker "generates" from now on (choice i starts i tokens in)."""
        self.script = self.tokenizer.encode(text, add_special_tokens=False)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeWorker:
        self._thread = threading.Thread(target=self._main, name="fake-worker", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fake worker did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "fake worker did not stop"

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.redis = aioredis.from_url(self.redis_url, decode_responses=True)
        await self.redis.hset(
            self.names.tokenizer(self.model),
            mapping=tokenizer_hash(
                self.model_dir,
                self.max_model_len,
                # As a real worker: every EOS id its model's configs declare.
                eos_token_id=sorted(self.tokenizer.eos_token_ids),
                generation=self.generation,
                **self._shape(),
                **self.published_config,
            ),
        )
        await self.redis.set(self.names.known_model(self.model), "1")
        for alias in self.aliases:
            await self.redis.set(self.names.known_alias(alias), self.model)
        for adapter in self.loras:
            await self.redis.set(self.names.known_adapter(adapter), self.model)
        streams = [self.names.requests(self.model, lane) for lane in LANES]
        for stream in streams:
            with contextlib.suppress(ResponseError):
                await self.redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
        await self._heartbeat()
        # The loops stop on their own when `_stop` is set: cancelling a blocked redis-py
        # read can leave it hanging.
        tasks = [
            asyncio.create_task(self._beat_forever()),
            asyncio.create_task(self._consume(streams)),
            asyncio.create_task(self._watch_aborts()),
        ]
        self._ready.set()
        await asyncio.gather(*tasks)
        for task in list(self._requests):
            task.cancel()
        await asyncio.gather(*self._requests, return_exceptions=True)
        with contextlib.suppress(RedisError):  # a test may have stopped Redis already
            await self.redis.delete(self.names.worker(self.model, self.instance))
        await self.redis.aclose()

    async def _runtime_loras(self) -> tuple[dict[str, str], dict[str, str]]:
        """(loras, lora_gens) with the runtime adapters asked for "loaded" as a worker
        would: a path that does not start with /adapters/ fails, with the reason reported."""
        loaded, gens = dict(self.loras), {}
        asked = await self.redis.hgetall(self.names.runtime_loras(self.model))
        for name, raw in asked.items():
            request = RuntimeLoRA.decode(raw)
            if name in self.loras or request is None:
                continue
            if request.path.startswith("/adapters/"):
                loaded[name], gens[name] = request.path, request.gen
            else:
                detail = {
                    "path": request.path,
                    "gen": request.gen,
                    "instance": self.instance,
                    "error": "no such folder",
                }
                await self.redis.hset(self.names.lora_errors(self.model), name, json.dumps(detail))
        return loaded, gens

    async def _heartbeat(self) -> None:
        loras, lora_gens = await self._runtime_loras()
        beat = {
            "model": self.model,
            "instance": self.instance,
            "capacity": 8,
            "running": 0,
            "waiting": 0,
            "kv_cache_usage": 0.0,
            "max_model_len": self.max_model_len,
            "runner": self.runner,
            "loras": loras,
            "lora_gens": lora_gens,
            "aliases": list(self.aliases),
            **({"root": self.root} if self.root is not None else {}),
        }
        await self.redis.set(self.names.worker(self.model, self.instance), json.dumps(beat), ex=3)

    def _running(self) -> bool:
        assert self._stop is not None
        return not self._stop.is_set()

    async def _beat_forever(self) -> None:
        while self._running():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)  # type: ignore[union-attr]
            if self._running():
                with contextlib.suppress(RedisError):  # a test may stop Redis under us
                    await self._heartbeat()

    async def _watch_aborts(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.names.abort)
        while self._running():
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            except RedisError:
                await asyncio.sleep(0.1)
                continue
            if message is not None and message["type"] == "message":
                self.aborted.append(message["data"])
        with contextlib.suppress(RedisError):
            await pubsub.aclose()

    async def _consume(self, streams: list[str]) -> None:
        """Every lane in one read (lane order is the real worker's business, not tested here)."""
        while self._running():
            if self.behaviour == "paused":
                self.paused.set()  # no read is in flight from here on
                await asyncio.sleep(0.05)
                continue
            self.paused.clear()
            try:
                entries = await self.redis.xreadgroup(
                    WORKER_GROUP, self.instance, dict.fromkeys(streams, ">"), count=16, block=100
                )
            except RedisError:
                await asyncio.sleep(0.1)
                continue
            for stream, messages in entries or []:
                for entry_id, data in messages:
                    request = GenerateRequest.decode(data["data"])
                    self.received.append(request)
                    self.entries[request.id] = (stream, entry_id)
                    task = asyncio.create_task(self._serve_request(stream, entry_id, request))
                    self._requests.add(task)
                    task.add_done_callback(self._requests.discard)

    # --- one request ----------------------------------------------------------------------

    async def _serve_request(self, stream: str, entry_id: str, request: GenerateRequest) -> None:
        behaviour = self.behaviour
        try:
            if behaviour == "silent":
                return
            if behaviour == "error":
                await self._publish(
                    ReplyMessage(
                        id=request.id,
                        seq=0,
                        finished=True,
                        error=ErrorInfo("the engine ran out of memory", code="oom", status=503),
                    ),
                    request,
                )
                return
            if request.pooling is not None:
                if behaviour == "slow":
                    await asyncio.sleep(30)  # until the test is over or the client leaves
                await self._embed(request)
                return
            if behaviour == "stalled":
                await asyncio.sleep(0.2)  # the API has noted where the request is queued
                await self._generate(request, stop_after=2, ignore_aborts=True)
                return
            if behaviour == "restart":
                await self._generate(request, attempt=1, stop_after=2)
                await asyncio.sleep(0.1)
                await self._generate(request, attempt=2)
                return
            await self._generate(
                request,
                drop={1} if behaviour == "gap" else set(),
                delay=0.05 if behaviour == "slow" else 0.0,
            )
        finally:
            if behaviour != "stalled":
                await self.redis.xack(stream, WORKER_GROUP, entry_id)
                await self.redis.xdel(stream, entry_id)

    def _tokens(self, request: GenerateRequest, choice: int) -> list[int]:
        max_tokens = request.sampling.get("max_tokens") or 16
        if self.behaviour == "slow":
            return [self.script[(choice + i) % len(self.script)] for i in range(max_tokens)]
        rotated = self.script[choice:] + self.script[:choice]
        return rotated[:max_tokens]

    def _logprob(self, token_id: int, top_n: int) -> TokenLogprob:
        alternatives = [(token_id, -0.5), (self.script[0], -1.5), (self.script[1], -2.5)]
        return TokenLogprob(token_id=token_id, logprob=-0.5, rank=1, top=alternatives[:top_n])

    async def _generate(
        self,
        request: GenerateRequest,
        *,
        attempt: int = 1,
        stop_after: int | None = None,
        drop: set[int] | None = None,
        delay: float = 0.0,
        ignore_aborts: bool = False,
    ) -> None:
        sampling = request.sampling
        n = sampling.get("n", 1)
        logprobs = sampling.get("logprobs")
        prompt_logprobs = sampling.get("prompt_logprobs")
        max_tokens = sampling.get("max_tokens") or 16
        skip = sampling.get("skip_special_tokens", True)
        per_choice = [self._tokens(request, c) for c in range(n)]
        steps = max(len(t) for t in per_choice)
        seq = 0
        # The engine's timings, as the real worker reports them (first and last message).
        arrival = time.time()
        times = {"arrival": arrival, "scheduled": arrival + 0.001, "first_token": arrival + 0.002}
        for step in range(steps):
            if (request.id in self.aborted and not ignore_aborts) or not self._running():
                return
            if stop_after is not None and step >= stop_after:
                return  # this attempt's worker "dies" here
            last = step == steps - 1
            choices = []
            for index, tokens in enumerate(per_choice):
                if step >= len(tokens):
                    continue
                token = tokens[step]
                finish = None
                if step == len(tokens) - 1:
                    finish = "length" if len(tokens) >= max_tokens else "stop"
                choices.append(
                    ChoiceDelta(
                        index=index,
                        text=self._text([token], skip),
                        token_ids=[token],
                        logprobs=[self._logprob(token, logprobs)] if logprobs is not None else None,
                        finish_reason=finish,
                    )
                )
            prompt_lps = None
            if step == 0 and prompt_logprobs is not None:
                prompt_lps = [None] + [
                    self._logprob(t, prompt_logprobs) for t in request.prompt_token_ids[1:]
                ]
            usage = None
            if last:
                usage = Usage(
                    prompt_tokens=len(request.prompt_token_ids),
                    completion_tokens=sum(len(t) for t in per_choice),
                    cached_tokens=CACHED_TOKENS,
                )
            message = ReplyMessage(
                id=request.id,
                seq=seq,
                choices=choices,
                finished=last,
                usage=usage,
                prompt_logprobs=prompt_lps,
                times=times if step == 0 or last else None,
                worker=self.instance,
                attempt=attempt,
                cached_tokens=CACHED_TOKENS if step == 0 else None,
            )
            if last:
                await self._store_result(request, per_choice, message)
            if seq not in (drop or set()):
                await self._publish(message, request)
            seq += 1
            if delay:
                await asyncio.sleep(delay)

    async def _embed(self, request: GenerateRequest) -> None:
        if request.id in self.aborted or not self._running():
            return
        message = ReplyMessage(
            id=request.id,
            seq=0,
            finished=True,
            usage=Usage(prompt_tokens=len(request.prompt_token_ids), completion_tokens=0),
            embedding=(
                _packed(fake_label_scores(request.prompt_token_ids, self.labels, request.pooling))
                if self.labels
                else fake_embedding(request.prompt_token_ids, request.pooling)
            ),
            worker=self.instance,
        )
        await self.redis.set(self.names.result(request.id), message.encode(), ex=60)
        await self._publish(message, request)

    async def _store_result(
        self, request: GenerateRequest, per_choice: list[list[int]], last: ReplyMessage
    ) -> None:
        logprobs = request.sampling.get("logprobs")
        skip = request.sampling.get("skip_special_tokens", True)
        choices = [
            ChoiceDelta(
                index=index,
                text=self._text(tokens, skip),
                token_ids=tokens,
                logprobs=[self._logprob(t, logprobs) for t in tokens]
                if logprobs is not None
                else None,
                finish_reason=next(c.finish_reason for c in last.choices if c.index == index)
                if any(c.index == index for c in last.choices)
                else "stop",
            )
            for index, tokens in enumerate(per_choice)
        ]
        result = ReplyMessage(
            id=request.id,
            seq=last.seq,
            choices=choices,
            finished=True,
            usage=last.usage,
            attempt=last.attempt,
            worker=self.instance,
        )
        await self.redis.set(self.names.result(request.id), result.encode(), ex=60)

    async def _publish(self, message: ReplyMessage, request: GenerateRequest) -> None:
        await self.redis.publish(self.names.reply(request.reply_to), message.encode())


def fake_embedding_values(prompt: list[int], pooling: dict[str, Any] | None) -> list[float]:
    """What the fake pooling worker answers: facts of the prompt, so tests can tell which
    input a vector belongs to, cut to the request's `dimensions`."""
    values = [float(len(prompt)), float(prompt[0]), float(prompt[-1]), 0.5, -0.25, 1e-3]
    dims = (pooling or {}).get("dimensions")
    return values[:dims] if dims else values


def fake_embedding(prompt: list[int], pooling: dict[str, Any] | None) -> str:
    return _packed(fake_embedding_values(prompt, pooling))


def fake_label_probs(prompt: list[int], labels: int) -> list[float]:
    """What the fake classifier answers: a distribution over its labels that favours
    label len(prompt) % labels, so tests can tell inputs apart (one label: a score that
    falls with the prompt's length)."""
    if labels == 1:
        return [1.0 / len(prompt)]
    favoured = len(prompt) % labels
    rest = 0.4 / (labels - 1)
    return [0.6 if i == favoured else rest for i in range(labels)]


def fake_label_scores(
    prompt: list[int], labels: tuple[str, ...], pooling: dict[str, Any] | None
) -> list[float]:
    """fake_label_probs, or with `activation` false their logs (the "logits")."""
    probs = fake_label_probs(prompt, len(labels))
    if (pooling or {}).get("activation") is False:
        return [math.log(p) for p in probs]
    return probs


def _packed(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


class LiveServer:
    """create_app under a real uvicorn on a free port, in a thread (tests call it over HTTP)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        # On its --uds socket if it has one, else on loopback at a free port.
        address = {} if settings.uds else {"host": "127.0.0.1", "port": self.port}
        config = uvicorn_config(self.app, settings, log_level="warning", **address)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return "http://localhost" if self.settings.uds else f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def submission(request_id: str, lane: str = INTERACTIVE_LANE, *, stream: bool = True) -> Submission:
    """A small generation for model "m", as routes hand them to the RequestSubmitter."""
    return Submission(
        request_id=request_id,
        model="m",
        prompt_token_ids=[1, 2, 3],
        sampling=SamplingParams(max_tokens=4),
        priority=0,
        stream=stream,
        lane=lane,
    )
