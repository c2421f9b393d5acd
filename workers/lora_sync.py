"""Keeps a worker's runtime LoRA adapters in step with what the API asked for.

`POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` only edit one Redis
hash per model (`runtime_loras`: name -> path); every worker of the model,
including one started later, converges on it here. Reading an adapter's files
happens on this thread; putting it into the model happens on the engine thread
between two steps (`EngineLoop.call_soon`). A load that fails is reported in
the model's `lora_errors` hash (the API turns it into the load call's answer)
and not retried until the request changes. The heartbeat announces what the
engine serves, which is how the API learns that a load is done.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import redis

from conveyor.bus import BusNames
from engine.llm_engine import LLMEngine
from engine.lora_adapter import LoRAAdapter

logger = logging.getLogger(__name__)


class LoRASync:
    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        model: str,
        instance: str,
        engine: LLMEngine,
        call_soon: Callable[[Callable[[LLMEngine], None]], None],
        interval: float,
    ) -> None:
        self.client = client
        self.names = names
        self.model = model
        self.instance = instance
        self.engine = engine
        self.call_soon = call_soon
        self.interval = interval
        # Loaded at start-up (--lora-modules): never touched by runtime updates.
        self.static = dict(engine.lora_paths)
        # Loads handed to the engine thread and not yet seen served (name -> path),
        # removals likewise, and loads that failed (name -> path) until the request changes.
        self.pending: dict[str, str] = {}
        self.removing: set[str] = set()
        self.failed: dict[str, str] = {}
        # Failures on the engine thread, reported to Redis by this thread.
        self._engine_errors: dict[str, tuple[str, str]] = {}

    def run(self, finished: threading.Event) -> None:
        while not finished.is_set():
            try:
                self.sync()
            except redis.RedisError as exc:
                logger.warning("LoRA sync: Redis error (%s); retrying", exc)
            finished.wait(self.interval)

    def sync(self) -> None:
        """One pass: load what is requested and not served, drop what is served and not
        requested any more."""
        wanted = {
            name: path
            for name, path in self.client.hgetall(self.names.runtime_loras(self.model)).items()
            if name not in self.static
        }
        served = {n: p for n, p in self.engine.lora_paths.items() if n not in self.static}
        for name, (path, error) in list(self._engine_errors.items()):
            del self._engine_errors[name]
            self._report(name, path, error)
        self.pending = {n: p for n, p in self.pending.items() if served.get(n) != p}
        self.removing &= served.keys()
        self.failed = {n: p for n, p in self.failed.items() if wanted.get(n) == p}
        for name, path in wanted.items():
            if served.get(name) == path or path in (self.pending.get(name), self.failed.get(name)):
                continue
            try:
                adapter = self.engine.loras.read(name, path)
            except Exception as exc:  # a bad folder or file: the load call's answer
                self._report(name, path, str(exc))
                continue
            self.pending[name] = path
            self.call_soon(self._adder(adapter, path))
        for name in served.keys() - wanted.keys() - self.removing:
            self.removing.add(name)
            self.call_soon(self._remover(name))

    def _adder(self, adapter: LoRAAdapter, path: str) -> Callable[[LLMEngine], None]:
        def add(engine: LLMEngine) -> None:
            try:
                engine.loras.add(adapter, replace=True)
            except Exception as exc:  # reported; the worker serves on
                self._engine_errors[adapter.name] = (path, str(exc))

        return add

    def _remover(self, name: str) -> Callable[[LLMEngine], None]:
        def remove(engine: LLMEngine) -> None:
            if name in engine.lora_names:
                engine.unload_lora(name)

        return remove

    def _report(self, name: str, path: str, error: str) -> None:
        logger.error("LoRA adapter %s from %s failed to load: %s", name, path, error)
        self.pending.pop(name, None)
        self.failed[name] = path
        detail = {"path": path, "instance": self.instance, "error": error}
        self.client.hset(self.names.lora_errors(self.model), name, json.dumps(detail))
