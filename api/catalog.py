"""Which models are served right now, and each model's tokenizer, as workers announce them.

The API has no model of its own: live workers announce `{model, instance,
max_model_len, ...}` in heartbeat keys (with a TTL) and publish their tokenizer
files in a hash. This module reads both, caching the heartbeat scan for a
moment (a SCAN per request would cost O(keyspace)) and each tokenizer by the
digest its workers publish, so a new model version is picked up without a
restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis

from api.errors import ApiError
from api.quiet_futures import retrieve_error
from conveyor.bus import KNOWN_NAME_TTL_SECONDS, TOKENIZER_DIGEST_FIELD, BusNames, glob_escape
from conveyor.json_object import json_object
from engine.generation_defaults import GENERATION_DEFAULT_KEYS
from engine.grammar_compiler import GrammarCompiler
from engine.sampling_params import DEFAULT_MAX_LOGPROBS
from engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class LiveModel:
    """A model with at least one live worker, merged over its workers' heartbeats.

    A LoRA adapter is a model too: its requests join its `parent` (base) model's
    queue with the adapter named, and use the parent's tokenizer."""

    name: str
    workers: tuple[dict[str, Any], ...]
    parent: str | None = None
    # Where the adapter was loaded from, as its workers report it.
    adapter_path: str | None = None

    @property
    def queue_model(self) -> str:
        """The model whose queue, tokenizer and workers serve this one."""
        return self.parent or self.name

    @property
    def lora(self) -> str | None:
        """The adapter to name in a request (None: the model is a base model)."""
        return self.name if self.parent is not None else None

    @property
    def root(self) -> str:
        """An adapter's folder; a model's argument as its workers were given it (a folder,
        a .gguf, a hub id), as vLLM's `root` is; the name for workers that do not say."""
        if self.adapter_path:
            return self.adapter_path
        roots = [w["root"] for w in self.workers if isinstance(w.get("root"), str) and w["root"]]
        return roots[0] if roots else self.name

    @property
    def runner(self) -> str | None:
        """ "generate" or "pooling" when every worker runs it (older peers: generate);
        None while workers disagree (a redeploy to the other kind in progress)."""
        kinds = {w.get("runner", "generate") for w in self.workers}
        return kinds.pop() if len(kinds) == 1 else None

    @property
    def sleeping(self) -> bool:
        """Every worker is asleep or falling asleep (POST /sleep): none would run a
        request."""
        return bool(self.workers) and all(w.get("sleeping") is True for w in self.workers)

    def require_awake(self) -> None:
        """A 503 before anything is queued while the model sleeps (a worker would refuse
        the request anyway)."""
        if self.sleeping:
            raise ApiError(
                503,
                f"The model `{self.name}` is asleep (POST /sleep): POST /wake_up wakes it, "
                "then try again",
                code="model_sleeping",
            )

    def require_runner(self, runner: str, endpoint: str) -> None:
        """A 400 naming the right endpoint when the model serves the other kind of work."""
        served = self.runner
        if served == runner:
            return
        if served is None:
            raise ApiError(
                503,
                f"The workers of `{self.name}` are changing between text generation and "
                "embeddings; try again shortly",
                code="no_worker",
                headers={"Retry-After": "5"},
            )
        what = (
            "a pooling model: it embeds or classifies prompts (/v1/embeddings or /classify, "
            "/pooling, /score, /rerank) and generates no text"
            if served == "pooling"
            else "a text generation model: start it with --runner pooling for embeddings"
        )
        raise ApiError(
            400,
            f"The model `{self.name}` is {what}; {endpoint} is not supported for it",
            param="model",
            code="model_not_supported",
        )

    @property
    def max_model_len(self) -> int | None:
        """The smallest any worker serves, so a request fits whichever worker takes it."""
        lens = [w["max_model_len"] for w in self.workers if isinstance(w.get("max_model_len"), int)]
        return min(lens) if lens else None


@dataclass(frozen=True)
class PublishedShape:
    """The embedding facts a model's workers publish (engine/pooling_params.EmbeddingShape)."""

    hidden_size: int
    is_matryoshka: bool
    matryoshka_dimensions: tuple[int, ...]
    # A sequence classifier's label names (its outputs, in order); () for other models.
    labels: tuple[str, ...] = ()
    # A cross-encoder that reads a pair as its texts joined (classifier_from_token), not
    # as the tokenizer's text-pair encoding.
    concat_pairs: bool = False
    # An encoder's token types: two or more, and a pair's second text is marked as such.
    type_vocab_size: int = 0

    @classmethod
    def of(cls, config: dict[str, Any]) -> PublishedShape | None:
        """None for workers that publish none (older releases): they check it themselves."""
        size, dims = config.get("hidden_size"), config.get("matryoshka_dimensions") or []
        if not isinstance(size, int) or not isinstance(dims, list):
            return None
        labels = config.get("labels") or []
        return cls(
            size,
            bool(config.get("is_matryoshka")),
            tuple(int(d) for d in dims),
            tuple(str(label) for label in labels) if isinstance(labels, list) else (),
            bool(config.get("concat_pairs")),
            int(config.get("type_vocab_size") or 0),
        )


@dataclass
class ModelTokenizer:
    """A model's tokenizer plus the plain-JSON facts published next to it."""

    tokenizer: Tokenizer
    digest: str
    max_model_len: int | None
    generation_defaults: dict[str, Any]
    # Checks structured-output constraints against this vocabulary (built on first use).
    grammars: GrammarCompiler
    # The workers' --max-logprobs (-1: the vocabulary).
    max_logprobs: int = DEFAULT_MAX_LOGPROBS
    shape: PublishedShape | None = None
    # The model writes OpenAI's harmony format (gpt-oss): api/harmony_parser.py reads it.
    harmony: bool = False
    checked: float = field(default=0.0)


class ModelCatalog:
    """Live models from heartbeats; tokenizers from the worker-published hash."""

    def __init__(
        self,
        redis: Redis,
        names: BusNames,
        chat_template: str | None = None,
        refresh_interval: float = 1.0,
        content_format: str = "auto",
        min_refresh_interval: float = 0.1,
        revalidate_interval: float = 5.0,
    ) -> None:
        self._redis = redis
        self._names = names
        self._chat_template = chat_template
        self._content_format = content_format
        self._refresh_interval = refresh_interval
        self._min_refresh_interval = min_refresh_interval
        self._revalidate_interval = revalidate_interval
        self._live: dict[str, LiveModel] = {}
        # More names of live models (vLLM's --served-model-name A B): alias -> model, or
        # None for a name several models claim.
        self._aliases: dict[str, str | None] = {}
        self._scanned_at = float("-inf")
        # The heartbeat scan under way: requests that need one meanwhile share it, its
        # answer or its error (a hung Redis failed each waiter's scan in turn: one more
        # read timeout per request queued behind it).
        self._scanning: asyncio.Future[dict[str, LiveModel]] | None = None
        # Base model names (and their aliases) this process saw live, and when last: a
        # Redis that restarted empty loses the `known_*` keys until the workers announce
        # again, and a request in that gap is told to retry (503), not that the model
        # does not exist (404). Forgotten as the keys are, KNOWN_NAME_TTL_SECONDS on.
        self._seen: dict[str, float] = {}
        self._tokenizers: dict[str, ModelTokenizer] = {}
        self._by_digest: dict[str, Tokenizer] = {}
        self._tokenizer_locks: dict[str, asyncio.Lock] = {}
        self._cache_dir = Path(tempfile.mkdtemp(prefix="conveyor-api-tokenizers-"))
        # One thread: HF fast tokenizers are not safe to mutate concurrently, and
        # tokenizing off the event loop is what matters.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self._cache_dir, ignore_errors=True)

    async def in_thread(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-bound tokenizer work off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))

    # --- live models ------------------------------------------------------------------

    async def live_models(self, max_age: float | None = None) -> dict[str, LiveModel]:
        """Models with a live worker, from a heartbeat scan at most `max_age` seconds old."""
        max_age = self._refresh_interval if max_age is None else max_age
        if time.monotonic() - self._scanned_at <= max_age:
            return self._live
        if self._scanning is None:
            self._scanning = asyncio.ensure_future(self._refresh())
            self._scanning.add_done_callback(retrieve_error)
        # Shielded: a caller that goes away does not cancel the others' scan.
        return await asyncio.shield(self._scanning)

    async def _refresh(self) -> dict[str, LiveModel]:
        try:
            self._live = await self._scan()
            self._aliases = served_aliases(self._live)
            # Base models and their aliases only: an unloaded LoRA adapter is gone (404).
            bases = {name for name, model in self._live.items() if model.parent is None}
            aliases = {alias for alias, target in self._aliases.items() if target in bases}
            self._seen.update(dict.fromkeys(bases | aliases, time.monotonic()))
            self._scanned_at = time.monotonic()
            return self._live
        finally:
            self._scanning = None

    async def serves(self, model: str) -> bool:
        """Whether a live worker (not a draining one) serves the base model `model` now,
        as fresh as `live_models`: what a queued request could still be run by."""
        return model in await self.live_models()

    async def require_awake(self, live: LiveModel) -> None:
        """A 503 while the model sleeps, looked at again first: just after a wake_up
        answered by another API process this one's scan may be a beat old."""
        if live.sleeping:
            fresh = await self.live_models(max_age=self._min_refresh_interval)
            (fresh.get(live.name) or live).require_awake()

    async def aliases(self, max_age: float | None = None) -> dict[str, str]:
        """The other names live models answer to (alias -> model), as fresh as
        `live_models`."""
        await self.live_models(max_age)
        return {alias: model for alias, model in self._aliases.items() if model is not None}

    async def _scan(self) -> dict[str, LiveModel]:
        keys = [k async for k in self._redis.scan_iter(match=self._names.worker_pattern, count=500)]
        workers: dict[str, list[dict[str, Any]]] = {}
        if keys:
            for raw in await self._redis.mget(keys):
                beat = json_object(raw)
                # A draining worker reads no more requests: with no other, a request
                # queued for it would wait for a worker that may never come; a 503 says so.
                if (
                    beat is not None
                    and isinstance(beat.get("model"), str)
                    and beat.get("draining") is not True
                ):
                    workers.setdefault(beat["model"], []).append(beat)
        live = {name: LiveModel(name, tuple(beats)) for name, beats in sorted(workers.items())}
        adapters: dict[str, list[LiveModel]] = {}
        for base in list(live.values()):
            for adapter, path in served_adapters(base.workers).items():
                adapters.setdefault(adapter, []).append(
                    LiveModel(adapter, base.workers, base.name, path)
                )
        for adapter, offers in adapters.items():
            if adapter in live or len(offers) > 1:
                # A name that means two things is served as neither (a model keeps its own).
                logger.warning(
                    "LoRA adapter name %r is also %s: not offered",
                    adapter,
                    "a model" if adapter in live else "an adapter of several models",
                )
                continue
            live[adapter] = offers[0]
        return live

    async def known_models(self) -> set[str]:
        """Models some worker has ever announced (the `known_model` keys)."""
        prefix = self._names.known_model("")
        return {
            key[len(prefix) :]
            async for key in self._redis.scan_iter(match=f"{glob_escape(prefix)}*", count=500)
        }

    async def resolve(self, model: str) -> LiveModel:
        """The live model (an alias resolves to the model it names), or 404 (never served)
        / 503 (known, but no worker now)."""
        live = await self.live_models()
        if model not in live and model not in self._aliases:
            live = await self.live_models(max_age=self._min_refresh_interval)
        if model in live:
            return live[model]
        if model in self._aliases:
            target = self._aliases[model]
            if target is None:
                raise ApiError(
                    404,
                    f"The model name `{model}` is served by several models, so it names "
                    "none of them; use a model's own name",
                    param="model",
                    code="model_not_found",
                )
            if target in live:
                return live[target]
        known = (
            self._names.known_model(model),
            self._names.known_adapter(model),
            self._names.known_alias(model),
        )
        if self._seen_lately(model) or await self._redis.exists(*known):
            raise ApiError(
                503,
                f"The model `{model}` has no live worker right now; try again shortly",
                code="no_worker",
                headers={"Retry-After": "5"},
            )
        raise ApiError(
            404, f"The model `{model}` does not exist", param="model", code="model_not_found"
        )

    def _seen_lately(self, name: str) -> bool:
        seen = self._seen.get(name)
        return seen is not None and time.monotonic() - seen < KNOWN_NAME_TTL_SECONDS

    async def default_model(self) -> str:
        """The model to use when a request names none (vLLM allows it: chat, completions,
        tokenize): the one base model served, else a 400."""
        bases = [m.name for m in (await self.live_models()).values() if m.parent is None]
        if len(bases) == 1:  # its LoRA adapters share its tokenizer
            return bases[0]
        # Loading, its workers restarting, or Redis restarted empty.
        if not bases and (any(map(self._seen_lately, self._seen)) or await self.known_models()):
            raise ApiError(
                503,
                "No model has a live worker right now; try again shortly",
                code="no_worker",
                headers={"Retry-After": "5"},
            )
        raise ApiError(400, "model is required when not exactly one model is served", param="model")

    # --- tokenizers ---------------------------------------------------------------------

    async def tokenizer(self, model: str) -> ModelTokenizer:
        """The model's tokenizer, rebuilt when its workers publish a new digest."""
        cached = self._tokenizers.get(model)
        now = time.monotonic()
        if cached is not None and now - cached.checked < self._revalidate_interval:
            return cached
        key = self._names.tokenizer(model)
        digest = await self._redis.hget(key, TOKENIZER_DIGEST_FIELD)
        if digest is None:
            raise ApiError(
                503,
                f"the tokenizer of `{model}` has not been published yet; try again shortly",
                code="no_worker",
                headers={"Retry-After": "5"},
            )
        if cached is not None and cached.digest == digest:
            cached.checked = now
            return cached
        lock = self._tokenizer_locks.setdefault(model, asyncio.Lock())
        async with lock:
            cached = self._tokenizers.get(model)
            if cached is not None and cached.digest == digest:
                return cached
            files = await self._redis.hgetall(key)
            loaded = await self.in_thread(self._build, files, str(digest))
            loaded.checked = time.monotonic()
            self._tokenizers[model] = loaded
            return loaded

    def _build(self, files: dict[str, str], digest: str) -> ModelTokenizer:
        config = json_object(files.get("config.json")) or {}
        generation = json_object(files.get("generation_config.json")) or {}
        tokenizer = self._by_digest.get(digest)
        if tokenizer is None:
            folder = self._materialise(files, digest)
            try:
                tokenizer = Tokenizer.load(folder, self._chat_template, self._content_format)
            except ValueError as exc:
                raise ApiError(500, f"cannot load the published tokenizer: {exc}") from exc
            self._by_digest[digest] = tokenizer
        max_len = config.get("max_model_len")
        return ModelTokenizer(
            tokenizer=tokenizer,
            digest=digest,
            max_model_len=max_len if isinstance(max_len, int) else None,
            generation_defaults=_request_defaults(generation),
            max_logprobs=_int_or(config.get("max_logprobs"), DEFAULT_MAX_LOGPROBS),
            grammars=GrammarCompiler(tokenizer, tokenizer.vocab_size),
            shape=PublishedShape.of(config),
            harmony=config.get("harmony") is True,
        )

    def _materialise(self, files: dict[str, str], digest: str) -> Path:
        """Write the published files to a folder named by (a hash of) their digest."""
        folder = self._cache_dir / hashlib.sha256(digest.encode()).hexdigest()[:32]
        if folder.is_dir():
            return folder
        staging = Path(tempfile.mkdtemp(dir=self._cache_dir, prefix=".staging-"))
        for name, content in files.items():
            # Field names become file names: only plain names, never a path.
            if name != TOKENIZER_DIGEST_FIELD and _SAFE_FILE_NAME.match(name):
                (staging / name).write_text(content, encoding="utf-8")
        os.replace(staging, folder)
        return folder


def served_aliases(live: dict[str, LiveModel]) -> dict[str, str | None]:
    """Aliases every worker of a base model announces (alias -> model); one that is also
    a model's or adapter's name, or that two models claim, names no model (None)."""
    claims: dict[str, list[str]] = {}
    for model in live.values():
        if model.parent is not None:
            continue
        for alias in _announced_by_all(model.workers, "aliases"):
            claims.setdefault(alias, []).append(model.name)
    aliases: dict[str, str | None] = {}
    for alias, models in sorted(claims.items()):
        if alias in live:  # the model (or adapter) of that name keeps it
            logger.warning("served model name %r of %s is another model's name", alias, models)
            continue
        if len(models) > 1:
            logger.warning("served model name %r is claimed by %s: not offered", alias, models)
        aliases[alias] = models[0] if len(models) == 1 else None
    return aliases


def served_adapters(workers: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """LoRA adapters every worker of a model announces (name -> path): a request for one
    may be taken by any worker of the model, so one that some lack, or load from
    different folders, is not offered."""
    return dict(sorted(_announced_by_all(workers, "loras").items()))


def _announced_by_all(workers: tuple[dict[str, Any], ...], field: str) -> dict[str, str]:
    """What every worker's heartbeat lists under `field`, alike in all: a name -> value
    mapping (adapters' paths), or a list of names (each its own value). Any worker may
    take a request, so what one lacks is offered by none."""
    common: dict[str, str] | None = None
    for beat in workers:
        listed = beat.get(field)
        if isinstance(listed, list):
            listed = {name: name for name in listed if isinstance(name, str)}
        announced = (
            {k: v for k, v in listed.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(listed, dict)
            else {}
        )
        common = (
            announced
            if common is None
            else {k: v for k, v in common.items() if announced.get(k) == v}
        )
    return common or {}


def _request_defaults(generation: dict[str, Any]) -> dict[str, Any]:
    """The published sampling defaults (engine/generation_defaults.py) under the names of
    the request fields they stand in for: `max_new_tokens` caps `max_tokens`."""
    defaults = {k: generation[k] for k in GENERATION_DEFAULT_KEYS if k in generation}
    if "max_new_tokens" in defaults:
        defaults["max_tokens"] = defaults.pop("max_new_tokens")
    return defaults


def _int_or(value: Any, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback
