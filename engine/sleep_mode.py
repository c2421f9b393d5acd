"""Sleep mode: give the engine's memory back while it is idle, keep the process.

vLLM's `/sleep` for RLHF loops and shared GPUs: a trainer (or another model)
takes the device for a while, and waking is far faster than a restart. Two
parts sleep and wake separately, named as vLLM names them (`wake_up`'s tags):

- `kv_cache`: the paged KV cache is freed; on waking it is allocated again,
  zeroed, and the prefix cache starts empty (the blocks' contents are gone).
- `weights`: level 1 copies them to host memory (pinned, for a fast copy
  back) and frees the device's copies; level 2 drops them, and waking reads
  the checkpoint again (the slower wake, but host memory is freed too). On a
  CPU the weights already live in host memory, so level 1 keeps them as they
  are; level 2 frees them there too.

Every tensor keeps its Python identity (`tensor.data = ...` swaps its memory),
so whatever holds it (layers, the runner's cache list, the CUDA graphs' views)
sees the new memory without being told. The recorded decode CUDA graphs point
at the old addresses: they are released on sleep and recorded again once both
parts are awake (a recording that fails decodes eagerly, as at start-up).
LoRA adapters' tensors (`Linear.lora`, not modules) are left where they are,
so adapters can be loaded and unloaded meanwhile.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from collections.abc import Callable, Collection, Iterator

import torch

from engine.block_manager import BlockManager
from engine.decode_graphs import DecodeGraphs
from engine.kv_cache_memory import zeroed_kv_tensor

logger = logging.getLogger(__name__)

WEIGHTS = "weights"
KV_CACHE = "kv_cache"
PARTS = (WEIGHTS, KV_CACHE)
LEVELS = (1, 2)


class EngineAsleep(RuntimeError):
    """Work was given to an engine that is (partly) asleep."""


def weight_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor the model holds, each once, under a name stable across two builds of
    the same model: parameters, buffers, and plain tensor attributes (a packed copy of a
    tied embedding, say)."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        found = [
            *module._parameters.items(),
            *module._buffers.items(),
            *((k, v) for k, v in vars(module).items() if isinstance(v, torch.Tensor)),
        ]
        for attr, tensor in found:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            yield f"{module_name}.{attr}" if module_name else attr, tensor


def _release(tensor: torch.Tensor) -> int:
    """Point `tensor` at no memory; the bytes it held."""
    held = tensor.numel() * tensor.element_size()
    empty = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    # A weight packed for oneDNN (kernels/linear.py) takes only its own layout's memory.
    tensor.data = empty.to_mkldnn() if tensor.is_mkldnn else empty
    return held


class SleepMode:
    """Puts an idle engine's weights and KV cache to sleep and wakes them (engine thread)."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_manager: BlockManager,
        decode_graphs: DecodeGraphs | None,
        reload: Callable[[], torch.nn.Module],
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_manager = block_manager
        self.decode_graphs = decode_graphs
        # Builds the model again from its checkpoint: level 2's wake.
        self.reload = reload
        first = kv_caches[0][0] if kv_caches else None
        self._kv_shape = tuple(first.shape) if first is not None else ()
        self._kv_dtype = first.dtype if first is not None else torch.float32
        self.device = first.device if first is not None else torch.device("cpu")
        # The level the weights sleep at (None: awake).
        self.weights_level: int | None = None
        # Level 1's host copies, one per device storage (by its address when copied), and
        # where each tensor lay in its storage, so tensors that shared memory (a tied LM
        # head) share it again and strides come back as they were.
        self._host: dict[int, torch.Tensor] = {}
        self._layout: dict[str, tuple[int, int, tuple[int, ...], tuple[int, ...]]] = {}
        self.kv_asleep = False

    @property
    def asleep(self) -> frozenset[str]:
        """The parts asleep now (empty: awake and serving)."""
        parts = {WEIGHTS} if self.weights_level is not None else set()
        return frozenset(parts | ({KV_CACHE} if self.kv_asleep else set()))

    def sleep(self, level: int) -> None:
        """Free both parts (the engine must hold no request). A part already asleep stays
        as it is; asking for level 2 over level 1's sleep drops the host copies too."""
        if level not in LEVELS:
            raise ValueError(f"sleep level must be 1 or 2, not {level}")
        started = time.perf_counter()
        deeper = self.weights_level is None or level > self.weights_level
        if deeper and level == 1 and self.device.type != "cpu":
            # Every copy is made before anything is freed: one that fails (no host
            # memory) leaves the engine as it was, awake and serving.
            self._copy_to_host(list(weight_tensors(self.model)))
        self._release_graphs()
        kv_bytes = weight_bytes = 0
        if not self.kv_asleep:
            for keys, values in self.kv_caches:
                kv_bytes += _release(keys) + _release(values)
            self.block_manager.reset_prefix_cache()
            self.kv_asleep = True
        if deeper:
            weight_bytes = self._release_weights(level)
        gc.collect()
        trim_host_heap()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # back to the driver: other processes may use it now
        logger.info(
            "asleep at level %d in %.2f s: freed %.2f GiB of KV cache and %.2f GiB of weights",
            level,
            time.perf_counter() - started,
            kv_bytes / 2**30,
            weight_bytes / 2**30,
        )

    def _release_weights(self, level: int) -> int:
        """Free the device's weights (level 1: copied to the host already); the bytes."""
        if level == 1 and self.device.type == "cpu":
            self.weights_level = 1  # already in host memory: nothing to move
            return 0
        if level == 2:
            self._drop_host_copies()
        freed = sum(_release(tensor) for _, tensor in weight_tensors(self.model))
        self.weights_level = level
        return freed

    def _drop_host_copies(self) -> None:
        self._host.clear()
        self._layout.clear()
        if self.device.type == "cuda":
            _empty_pinned_cache()

    def _copy_to_host(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
        pin = self.device.type == "cuda"
        host: dict[int, torch.Tensor] = {}
        layout: dict[str, tuple[int, int, tuple[int, ...], tuple[int, ...]]] = {}
        try:
            for name, tensor in tensors:
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in host:
                    device_bytes = torch.empty(0, dtype=torch.uint8, device=self.device)
                    device_bytes.set_(storage)
                    copy = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pin)
                    host[key] = copy.copy_(device_bytes)
                shape, stride = tuple(tensor.shape), tensor.stride()
                layout[name] = (key, tensor.storage_offset(), shape, stride)
        except BaseException:
            host.clear()  # the copies made so far, out of torch's pinned cache too
            if pin:
                _empty_pinned_cache()
            raise
        self._host, self._layout = host, layout

    def wake_up(self, tags: Collection[str] | None = None) -> None:
        """Wake the parts named (all when None); once both are awake the engine serves
        again."""
        wanted = set(PARTS if tags is None else tags)
        unknown = wanted - set(PARTS)
        if unknown:
            raise ValueError(f"unknown wake_up tags {sorted(unknown)}: use {list(PARTS)}")
        started = time.perf_counter()
        if WEIGHTS in wanted and self.weights_level is not None:
            self._wake_weights()
        if KV_CACHE in wanted and self.kv_asleep:
            for keys, values in self.kv_caches:
                keys.data = zeroed_kv_tensor(self._kv_shape, self._kv_dtype, self.device)
                values.data = zeroed_kv_tensor(self._kv_shape, self._kv_dtype, self.device)
            self.kv_asleep = False
        if not self.asleep and self.decode_graphs is not None:
            self.decode_graphs.record_or_release()
        logger.info(
            "woke %s in %.2f s%s",
            " and ".join(sorted(wanted)),
            time.perf_counter() - started,
            "" if not self.asleep else f" ({', '.join(sorted(self.asleep))} still asleep)",
        )

    def _wake_weights(self) -> None:
        if self.weights_level == 1 and self.device.type != "cpu":
            self._copy_to_device()
        elif self.weights_level == 2:
            self._transplant(self.reload())
        self._drop_host_copies()
        trim_host_heap()  # the host copies, or the reloaded build's leftovers
        self.weights_level = None

    def _copy_to_device(self) -> None:
        """Level 1's copies back, each storage once. The host copies are dropped only
        after all of them are back, and a wake that fails partway (no device memory yet)
        frees what it had put back, so trying again needs no more memory than the first
        try."""
        restored: dict[int, torch.UntypedStorage] = {}
        tensors = list(weight_tensors(self.model))
        try:
            for name, tensor in tensors:
                key, offset, shape, stride = self._layout[name]
                if key not in restored:
                    restored[key] = self._host[key].to(self.device).untyped_storage()
                memory = torch.empty(0, dtype=tensor.dtype, device=self.device)
                tensor.data = memory.set_(restored[key], offset, shape, stride)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except BaseException:
            restored.clear()
            for _, tensor in tensors:
                _release(tensor)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise

    def _transplant(self, fresh: torch.nn.Module) -> None:
        """Move a freshly loaded build's memory into our tensors, name by name."""
        ours = dict(weight_tensors(self.model))
        theirs = dict(weight_tensors(fresh))
        if ours.keys() != theirs.keys():
            missing = sorted(ours.keys() ^ theirs.keys())[:5]
            raise RuntimeError(f"the reloaded model differs from the one asleep: {missing}")
        for name, tensor in ours.items():
            tensor.data = theirs[name].data

    def _release_graphs(self) -> None:
        if self.decode_graphs is not None:
            self.decode_graphs.release()


def trim_host_heap() -> None:
    """Hand freed host memory back to the system. glibc keeps freed blocks below its mmap
    threshold (weights of a few MB, once it has risen) in the heap, so without this a
    CPU engine asleep at level 2 kept about a third of its weights' memory resident."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim, or no way to ask
        return
    libc.malloc_trim(0)


def _empty_pinned_cache() -> None:
    """torch keeps freed pinned host blocks for reuse; level 1's copies are gone for good."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()
