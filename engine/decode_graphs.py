"""Decode steps replayed from CUDA graphs: one launch instead of hundreds per step.

A decode step runs the same dozen kernels in every layer, each on a few rows;
on a GPU such a step costs more in Python and kernel launches than in the
kernels themselves. So at start-up the engine records the model's forward for
decode batches of a few fixed sizes (1, 2, 4, then multiples of 8 up to
max_num_seqs), reading its inputs from static buffers; a decode step then
pads its batch to the next recorded size, copies its inputs into the buffers
and replays the graph. Padded rows store nothing (slot -1) and attend to
nothing (context 0), and their outputs are never read. A graph's attention
launches work for a fixed longest context, so each batch size is recorded for
a few context caps the backend names (Triton: 1, 4, 16, ... split-K
partitions, up to max_model_len) and a step takes the smallest cap covering
its longest sequence: short contexts do not pay for launching max_model_len's
partitions. Prefill and mixed steps run eagerly.

Only a backend that can attend from static buffers takes part (it has
`graph_metadata` and `graph_context_caps`: the Triton one). Without capture
(CPU, where CUDA graphs do not exist) the same static-buffer path runs
eagerly, which is how the tests check everything but the recording itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import torch

from kernels.attention import block_table_tensor

logger = logging.getLogger(__name__)
CPU = torch.device("cpu")


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to record: 1, 2, 4, multiples of 8, and max_num_seqs itself."""
    sizes = {s for s in (1, 2, 4) if s <= max_num_seqs}
    sizes.update(range(8, max_num_seqs + 1, 8))
    sizes.add(max_num_seqs)
    return sorted(sizes)


def supports_graphs(backend: Any) -> bool:
    return all(
        callable(getattr(backend, name, None)) for name in ("graph_metadata", "graph_context_caps")
    )


class DecodeGraphs:
    """Static input buffers and one recorded forward per batch size."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        backend: Any,
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
        capture: bool,
    ) -> None:
        if not supports_graphs(backend):
            raise ValueError(f"attention backend {backend.name!r} cannot run from static buffers")
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_num_seqs)
        self.context_caps: list[int] = sorted(backend.graph_context_caps(max_model_len))
        self.capture = capture
        largest = self.sizes[-1]
        self.max_blocks = -(-max_model_len // block_size)
        self.block_size = block_size

        def buffer(fill: int, dtype: torch.dtype, *shape: int) -> torch.Tensor:
            return torch.full(shape, fill, dtype=dtype, device=device)

        self.input_ids = buffer(0, torch.long, largest)
        self.positions = buffer(0, torch.long, largest)
        self.slot_mapping = buffer(-1, torch.long, largest)
        self.context_lens = buffer(0, torch.int32, largest)
        self.block_tables = buffer(0, torch.int32, largest, self.max_blocks)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._outputs: dict[tuple[int, int], torch.Tensor] = {}
        # Steps served, by recorded (size, context cap): what padding and caps cost.
        self.steps_by_key: Counter[tuple[int, int]] = Counter()

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def _forward(self, size: int, context_cap: int) -> torch.Tensor:
        metadata = self.backend.graph_metadata(
            self.slot_mapping[:size],
            self.block_tables[:size],
            self.context_lens[:size],
            context_cap,
        )
        return self.model(
            self.input_ids[:size],
            self.positions[:size],
            self.kv_caches,
            self.backend,
            metadata,
        )

    @torch.inference_mode()
    def record(self) -> None:
        """Warm each (size, cap) up (compiling its kernels), then record it; largest first."""
        started = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):
            for cap in reversed(self.context_caps):
                self._forward(size, cap)  # padded rows only: stores and attends nothing
                if not self.capture:
                    continue
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._outputs[size, cap] = self._forward(size, cap)
                pool = graph.pool()  # every graph reuses the first (largest) one's memory
                self._graphs[size, cap] = graph
        if self.capture:
            torch.cuda.synchronize()
            logger.info(
                "recorded %d decode CUDA graphs (batch sizes 1..%d, context caps %s) in %.1f s",
                len(self._graphs),
                self.max_batch,
                self.context_caps,
                time.perf_counter() - started,
            )

    def record_or_release(self) -> bool:
        """`record`, or on failure say so loudly, drop whatever was recorded and return
        False: serving eagerly beats not serving (at start-up and on waking from sleep)."""
        try:
            self.record()
        except Exception:
            logger.exception("recording decode CUDA graphs failed; running decodes eagerly")
            self.release()
            if self.input_ids.is_cuda:
                torch.cuda.synchronize(self.input_ids.device)
            return False
        return True

    def release(self) -> None:
        """Drop the recorded graphs and their memory pool (sleep mode frees the memory they
        point at; `record` makes them again). Until then decodes run eagerly."""
        self._graphs.clear()
        self._outputs.clear()

    def run(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        block_tables: list[list[int]],
        context_lens: list[int],
    ) -> torch.Tensor:
        """Hidden states [len(input_ids), hidden] for one decode token per sequence."""
        n = len(input_ids)
        size = next(s for s in self.sizes if s >= n)
        pad = size - n
        self.input_ids[:size].copy_(torch.tensor(input_ids + [0] * pad), non_blocking=True)
        self.positions[:size].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.slot_mapping[:size].copy_(torch.tensor(slots + [-1] * pad), non_blocking=True)
        lens = torch.tensor(context_lens + [0] * pad, dtype=torch.int32)
        self.context_lens[:size].copy_(lens, non_blocking=True)
        # Only the columns this step's contexts reach: the kernels read no further.
        tables = block_table_tensor(
            block_tables + [[]] * pad, context_lens + [0] * pad, self.block_size, CPU
        )
        self.block_tables[:size, : tables.shape[1]].copy_(tables, non_blocking=True)
        cap = next(c for c in self.context_caps if c >= max(context_lens))
        key = (size, cap)
        self.steps_by_key[key] += 1
        graph = self._graphs.get(key)
        if graph is None:
            return self._forward(size, cap)[:n]
        graph.replay()
        return self._outputs[key][:n]
