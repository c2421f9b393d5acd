"""Keeps a worker's runtime LoRA adapters in step with what the API asked for.

`POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` only edit one Redis
hash per model (`runtime_loras`: name -> {"path", "gen"}, `gen` unique per
call); every worker of the model, including one started later, converges on
it here. Reading an adapter's files happens on this thread; putting it into
the model happens on the engine thread between two steps
(`EngineLoop.call_soon`), and a replacement swaps in only once its weights are
built (a failed reload keeps the old adapter serving). The heartbeat announces
each runtime adapter's `gen` (`lora_gens`), which is how the API learns that
its call took effect everywhere, even a reload from the same folder. A load
that fails is reported in the model's `lora_errors` hash, tagged with its
`gen` (the API makes it the call's answer), and tried again after a while (a
folder may not be mounted yet on a new node).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from conveyor.bus import BusNames
from conveyor.runtime_lora import RuntimeLoRA
from engine.llm_engine import LLMEngine
from engine.lora_adapter import LoRAAdapter

logger = logging.getLogger(__name__)

# Seconds before a load that failed is tried again (while it is still asked for).
RETRY_FAILED_AFTER = 30.0

Task = Callable[[LLMEngine], None]


@dataclass(frozen=True)
class _Failure:
    name: str
    request: RuntimeLoRA
    error: str


class LoRASync:
    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        model: str,
        instance: str,
        engine: LLMEngine,
        call_soon: Callable[[Task], None],
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
        self.static = frozenset(engine.lora_names)
        # The gen of each runtime adapter the engine serves: replaced (never mutated) on
        # the engine thread, read by this thread and the heartbeat.
        self.served_gens: dict[str, str] = {}
        # Handed to the engine thread and not yet seen served or failed (name -> gen).
        self.pending: dict[str, str] = {}
        self.removing: set[str] = set()
        # Loads that failed: name -> (gen, when), skipped until RETRY_FAILED_AFTER.
        self.failed: dict[str, tuple[str, float]] = {}
        # Failures not yet written to Redis (from either thread).
        self._failures: queue.Queue[_Failure] = queue.Queue()

    def run(self, finished: threading.Event) -> None:
        while not finished.is_set():
            try:
                self.sync()
            except redis.RedisError as exc:
                logger.warning("LoRA sync: Redis error (%s); retrying", exc)
            finished.wait(self.interval)

    def converge_now(self) -> None:
        """One pass with the engine changes made at once: for a worker about to announce
        itself (before its engine loop runs), so it never hides a runtime adapter."""
        try:
            self.sync(run=lambda task: task(self.engine))
        except redis.RedisError as exc:
            logger.warning("LoRA sync at start-up: Redis error (%s); the thread retries", exc)

    def sync(self, run: Callable[[Task], None] | None = None) -> None:
        """One pass: load what is asked for and not served, drop what is served and no
        longer asked for, report failures."""
        run = run or self.call_soon
        raw = self.client.hgetall(self.names.runtime_loras(self.model))
        wanted = {
            name: request
            for name, value in raw.items()
            if name not in self.static and (request := RuntimeLoRA.decode(value)) is not None
        }
        self._report_failures()
        served = self.served_gens
        now = time.monotonic()
        self.failed = {
            name: (gen, when)
            for name, (gen, when) in self.failed.items()
            if name in wanted and wanted[name].gen == gen and now - when < RETRY_FAILED_AFTER
        }
        self.pending = {
            name: gen
            for name, gen in self.pending.items()
            if served.get(name) != gen and self.failed.get(name, ("",))[0] != gen
        }
        self.removing &= served.keys()
        for name, request in wanted.items():
            gen = request.gen
            if served.get(name) == gen or self.pending.get(name) == gen or name in self.failed:
                continue
            try:
                adapter = self.engine.loras.read(name, request.path)
            except Exception as exc:  # a bad folder or file: the load call's answer
                self._failures.put(_Failure(name, request, str(exc)))
                self._report_failures()
                continue
            self.pending[name] = gen
            run(self._adder(adapter, request))
        for name in served.keys() - wanted.keys() - self.removing:
            self.removing.add(name)
            run(self._remover(name))

    def _adder(self, adapter: LoRAAdapter, request: RuntimeLoRA) -> Task:
        def add(engine: LLMEngine) -> None:
            try:
                engine.loras.add(adapter, replace=True)
            except Exception as exc:  # reported; the old adapter (if any) serves on
                self._failures.put(_Failure(adapter.name, request, str(exc)))
                return
            self.served_gens = {**self.served_gens, adapter.name: request.gen}

        return add

    def _remover(self, name: str) -> Task:
        def remove(engine: LLMEngine) -> None:
            if name in engine.lora_names:
                engine.unload_lora(name)
            self.served_gens = {k: v for k, v in self.served_gens.items() if k != name}

        return remove

    def _report_failures(self) -> None:
        """Write queued failures to Redis first, then remember them (a Redis error leaves
        the failure queued for the next pass)."""
        while True:
            try:
                failure = self._failures.get_nowait()
            except queue.Empty:
                return
            detail = {
                "path": failure.request.path,
                "gen": failure.request.gen,
                "instance": self.instance,
                "error": failure.error,
            }
            try:
                self.client.hset(
                    self.names.lora_errors(self.model), failure.name, json.dumps(detail)
                )
            except redis.RedisError:
                self._failures.put(failure)
                raise
            logger.error(
                "LoRA adapter %s from %s failed to load: %s",
                failure.name,
                failure.request.path,
                failure.error,
            )
            self.pending.pop(failure.name, None)
            self.failed[failure.name] = (failure.request.gen, time.monotonic())
