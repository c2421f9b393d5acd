"""Whether Triton kernels can run on a device, and why not when they cannot.

Triton is imported lazily: the CPU engine and `import kernels` must keep
working where triton is missing or broken. On CPU the kernels run only in
Triton's interpreter (TRITON_INTERPRET=1, read by triton itself when a kernel
module is imported), which is how the tests prove them without a GPU.
"""

from __future__ import annotations

import torch


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on `device`, else a message saying how to fix it."""
    try:
        import triton
    except Exception as exc:  # a broken install can raise more than ImportError
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    if device.type == "cuda":
        return None
    if not triton.knobs.runtime.interpret:
        return (
            f"the Triton kernels need a CUDA device, not {device.type!r}; set "
            "TRITON_INTERPRET=1 to run them in Triton's interpreter on CPU (for tests: slow), "
            "or use the torch backend"
        )
    from kernels.triton_store_kv import store_kv_kernel

    if not is_interpreted(store_kv_kernel):
        return (
            "TRITON_INTERPRET=1 was set after the Triton kernel modules were imported, so "
            "they were compiled for a GPU; set it before importing kernels.triton_*"
        )
    return None


def is_interpreted(kernel: object) -> bool:
    """True when a @triton.jit function was defined under TRITON_INTERPRET=1."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 products stay fp32 ("ieee"), matching torch; on a GPU tf32 would cost ~1e-3."""
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast_dot(kernel: object, dtype: torch.dtype) -> bool:
    """Whether a kernel must widen bf16 tiles to fp32 before `tl.dot`.

    Triton's interpreter multiplies bf16 tiles as their raw uint16 bits. bf16
    products are exact in fp32, so widening first computes what a GPU's bf16
    MMA (fp32 accumulate) computes; on a GPU it is never done.
    """
    return dtype == torch.bfloat16 and is_interpreted(kernel)


def gemm_tiles(m_size: int, element_size: int, fp32_depth: int = 32) -> tuple[int, int, int]:
    """A weight-decoding GEMM's tile (rows, columns, depth) for `m_size` input rows:
    few rows for a decode step, up to 64 for a prefill chunk; fp32 tiles take twice
    the registers, so they are smaller (`fp32_depth`: shallower where a kernel decodes
    more per element, kernels/triton_offline_compile.py checks none spills)."""
    rows = 16 if m_size <= 16 else 32 if m_size <= 32 else 64
    if element_size > 2:
        return min(rows, 32), 32, fp32_depth
    return rows, 64, 64
