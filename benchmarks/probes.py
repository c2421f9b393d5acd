"""Machine-limit probes: how fast could this box possibly run the model?

An engine number means little on its own on a shared, noisy machine. These
probes measure, in the same run, the two ceilings a decoder is held under:
matmul throughput (the bound for batched decode, where every weight is reused
by many sequences) and streaming memory bandwidth (the bound for a single
stream, which reads every weight once per token). Each takes about 1-2 s and
uses torch's current thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from kernels.linear import TORCH_LINEAR, LinearMethod, linear_method_for


@dataclass(frozen=True)
class DecodeDims:
    """The GEMM sizes of one decode step; defaults are SmolLM2-135M's."""

    hidden: int = 576
    intermediate: int = 1536
    vocab: int = 49152
    q_dim: int = 576
    kv_dim: int = 192
    num_layers: int = 30

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear in one transformer layer: q, k, v, o, gate, up, down."""
        h, i = self.hidden, self.intermediate
        return [
            (h, self.q_dim),
            (h, self.kv_dim),
            (h, self.kv_dim),
            (self.q_dim, h),
            (h, i),
            (h, i),
            (i, h),
        ]

    def params_per_token(self) -> int:
        """Weights every decoded token multiplies through (layers + lm_head)."""
        layer = sum(k * n for k, n in self.layer_shapes())
        return self.num_layers * layer + self.hidden * self.vocab


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device, budget_s: float) -> float:
    """Best wall time of `fn` over repeated runs within `budget_s` (after one warm-up)."""
    fn()
    _sync(device)
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    reps = 0
    while reps < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
        reps += 1
        if reps >= 1000:
            break
    return best


def gemm_gflops(
    kind: Literal["decode", "square"] = "decode",
    *,
    batch: int = 64,
    dims: DecodeDims | None = None,
    square_n: int = 2048,
    budget_s: float = 1.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Matmul throughput in GFLOP/s (best of several reps).

    "decode" replays one decode step's GEMMs at `batch` rows: every layer's
    linears (`num_layers` times over one layer's weights) then the lm_head,
    which is the flop mix a batched decode step really has, with its skinny
    shapes. "square" is one large square GEMM, the machine's headline peak;
    the decode-shaped number is the one an engine can hope to reach.
    """
    dev = torch.device(device)
    with torch.inference_mode():
        if kind == "square":
            n = _square_size_within(budget_s, square_n, dev, dtype)
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            seconds = _best_seconds(lambda: torch.mm(a, b), dev, budget_s)
            return 2.0 * n**3 / seconds / 1e9
        if kind != "decode":
            raise ValueError(f"kind: expected 'decode' or 'square', got {kind!r}")
        d = dims or DecodeDims()
        flops = 2.0 * batch * d.params_per_token()
        methods = [TORCH_LINEAR, linear_method_for(dev)]
        seconds = min(
            _best_seconds(_decode_step(method, d, batch, dev, dtype), dev, budget_s / 2)
            for method in dict.fromkeys(methods)  # one run when both are the same
        )
        return flops / seconds / 1e9


_SMALLEST_SQUARE = 256


def _square_size_within(
    budget_s: float, largest: int, dev: torch.device, dtype: torch.dtype
) -> int:
    """The largest square GEMM (halving down from `largest`) whose warm-up and three
    reps fit `budget_s`, judged from one small GEMM's time. A CPU without native bf16
    multiplies bf16 at ~1 GFLOP/s, where one 2048² GEMM takes ~18 s; at 256 the
    product is still compute-bound, so the peak it reads stays honest."""
    a = torch.randn(_SMALLEST_SQUARE, _SMALLEST_SQUARE, device=dev, dtype=dtype)
    unit = _best_seconds(lambda: torch.mm(a, a), dev, 0.0)
    n = largest
    while n > _SMALLEST_SQUARE and 4 * unit * (n / _SMALLEST_SQUARE) ** 3 > budget_s:
        n //= 2
    return n


def _decode_step(
    method: LinearMethod, d: DecodeDims, batch: int, dev: torch.device, dtype: torch.dtype
) -> Callable[[], None]:
    """One decode step's matmuls through `method`, weights laid out as it wants them."""
    shapes = [*d.layer_shapes(), (d.hidden, d.vocab)]
    weights = [method.pack(torch.randn(n, k, device=dev, dtype=dtype)) for k, n in shapes]
    *layer, lm_head = weights
    inputs = {k: torch.randn(batch, k, device=dev, dtype=dtype) for k, _ in shapes}

    def step() -> None:
        for _ in range(d.num_layers):
            for w, (k, _) in zip(layer, shapes, strict=False):
                method.apply(inputs[k], w, None)
        method.apply(inputs[d.hidden], lm_head, None)

    return step


def memory_bandwidth_gbs(
    size_mb: int = 512,
    *,
    budget_s: float = 1.0,
    device: str | torch.device = "cpu",
) -> float:
    """Streaming read bandwidth in GB/s: best time to sum a `size_mb` fp32 tensor.

    A sum reads every byte once and writes nothing, like a single-stream decode
    reading its weights; the tensor is far larger than any cache.
    """
    dev = torch.device(device)
    with torch.inference_mode():
        data = torch.ones(size_mb * (1 << 20) // 4, device=dev, dtype=torch.float32)
        seconds = _best_seconds(data.sum, dev, budget_s)
        nbytes = data.numel() * data.element_size()
    del data
    return nbytes / seconds / 1e9


if __name__ == "__main__":
    import json

    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "gemm_gflops_decode_shape": round(gemm_gflops("decode"), 1),
                "gemm_gflops_square": round(gemm_gflops("square"), 1),
                "mem_bw_gbs": round(memory_bandwidth_gbs(), 2),
            }
        )
    )
