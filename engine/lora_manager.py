"""The LoRA adapters an engine serves right now: loaded at start-up, added and removed at
run time, each in a slot of the model's LoRA layers.

Removal never cuts a request short: the name stops taking new requests at once,
and the slot is freed (and later reused) only once no unfinished sequence uses
it. Every load gets its own prefix-cache root, so an adapter reloaded under the
same name from new weights never reads KV its predecessor computed.

`names` and `paths` are replaced, never mutated, so other threads (a worker's
intake and heartbeat) may read them while the engine thread changes them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterable

import torch

from engine.config import ModelConfig
from engine.lora_adapter import LoRAAdapter, load_lora_adapter
from engine.models.lora import LoRAContext, attach_lora, slot_weights

logger = logging.getLogger(__name__)

_load_serials = itertools.count()


class LoRAManager:
    def __init__(
        self,
        model: torch.nn.Module,
        model_config: ModelConfig,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
        max_loaded: int | None = None,
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.max_rank = max_rank
        # The most adapters resident at once (--max-cpu-loras); None: no limit.
        self.max_loaded = max_loaded
        self.dtype = dtype
        self.device = device
        self.context: LoRAContext = attach_lora(model)
        self.names: tuple[str, ...] = ()
        self.paths: dict[str, str] = {}
        self._slots: dict[str, int] = {}
        self._roots: dict[str, int] = {}
        self._free: list[int] = []
        self._num_slots = 0
        # Removed adapters' slots, freed once no unfinished sequence uses them.
        self.retiring: set[int] = set()

    def read(self, name: str, path: str) -> LoRAAdapter:
        """Read and check an adapter folder (any thread: nothing here touches the model)."""
        return load_lora_adapter(name, path, self.model_config, self.max_rank)

    def add(self, adapter: LoRAAdapter, replace: bool = False) -> None:
        """Serve `adapter` under its name (engine thread). `replace`: a served adapter of
        that name is swapped out (its running requests finish on the old weights).

        All or nothing: the weights are built before anything changes, so a failure (out
        of memory, say) leaves the served adapters as they were."""
        replacing = adapter.name in self._slots
        if replacing and not replace:
            raise ValueError(f"LoRA adapter {adapter.name!r} is already loaded")
        # Retiring slots still hold their weights until their requests finish.
        held = len(self._slots) + len(self.retiring)
        if not replacing and self.max_loaded is not None and held >= self.max_loaded:
            raise ValueError(
                f"{held} LoRA adapters are loaded (or finishing their requests after an "
                f"unload), the most --max-cpu-loras ({self.max_loaded}) allows: unload one "
                "first, or wait"
            )
        layers = list(self.model.lora_projections())
        weights = [
            slot_weights(subs, linear.in_features, index, adapter, self.dtype, self.device)
            for index, linear, subs in layers
        ]
        if replacing:
            self.remove(adapter.name)
        slot = self._free.pop() if self._free else self._new_slot()
        for (_, linear, _), (a, b) in zip(layers, weights, strict=True):
            linear.lora.set_slot(slot, a, b)
        self._slots[adapter.name] = slot
        self._roots[adapter.name] = hash(("lora", adapter.name, next(_load_serials)))
        self._publish()
        self.paths = {**self.paths, adapter.name: str(adapter.path)}
        logger.info(
            "LoRA adapter %s: rank %d on %d projections, from %s (slot %d)",
            adapter.name,
            adapter.rank,
            len(adapter.weights),
            adapter.path,
            slot,
        )

    def remove(self, name: str) -> None:
        """Stop taking requests for `name` now; its slot retires (engine thread)."""
        slot = self._slots.pop(name, None)
        if slot is None:
            raise ValueError(f"LoRA adapter {name!r} is not loaded")
        del self._roots[name]
        self._publish()
        self.paths = {k: v for k, v in self.paths.items() if k != name}
        self.retiring.add(slot)
        logger.info("LoRA adapter %s removed (slot %d retires when idle)", name, slot)

    def free_retired(self, in_use: Collection[int]) -> None:
        """Free the retiring slots no unfinished sequence uses (engine thread, per step)."""
        for slot in [s for s in self.retiring if s not in in_use]:
            self.retiring.discard(slot)
            for _, linear, _ in self.model.lora_projections():
                empty = {"dtype": self.dtype, "device": self.device}
                linear.lora.set_slot(
                    slot,
                    torch.zeros(linear.in_features, 0, **empty),
                    torch.zeros(0, linear.out_features, **empty),
                )
            self._free.append(slot)

    def slot(self, name: str) -> int:
        try:
            return self._slots[name]
        except KeyError:
            served = ", ".join(self.names) or "none"
            raise ValueError(f"lora: unknown LoRA adapter {name!r} (served: {served})") from None

    def names_of(self, slots: Iterable[int | None]) -> tuple[str, ...]:
        """The served adapters among `slots`, sorted (retiring slots have no name now)."""
        by_slot = {slot: name for name, slot in self._slots.items()}
        return tuple(sorted({by_slot[s] for s in slots if s in by_slot}))

    def cache_root(self, name: str) -> int:
        return self._roots[name]

    def adapter_bytes(self, rank: int, itemsize: int) -> int:
        """What one adapter of `rank` on every projection takes as stored here: per fused
        projection, A [in, parts * rank] and block-diagonal B [parts * rank, out]."""
        elements = sum(
            len(subs) * rank * (linear.in_features + linear.out_features)
            for _, linear, subs in self.model.lora_projections()
        )
        return elements * itemsize

    def _new_slot(self) -> int:
        self._num_slots += 1
        return self._num_slots - 1

    def _publish(self) -> None:
        self.names = tuple(sorted(self._slots, key=self._slots.__getitem__))
