"""Memory for the paged KV cache.

On CPU the cache is an anonymous private mapping rather than `torch.zeros`: the kernel
hands it out zero-filled (so a block never read back before it is written holds zeros,
never stale NaNs that a masked softmax would spread) and backs each page only on its
first write. Zeroing a 1 GiB cache up front faults every page in before the first
request, seconds on a VM; lazily, startup pays nothing and a small workload's resident
memory is what it uses. On a GPU `torch.zeros` is one fast memset.
"""

from __future__ import annotations

import math
import mmap

import torch


def zeroed_kv_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A zero-filled tensor for one layer's keys or values."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    # MAP_PRIVATE: plain process memory (MAP_SHARED, mmap's default, would be shmem).
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # frombuffer's storage keeps `region` alive for as long as it is used. The tensor is
    # set onto that storage rather than viewed from the byte tensor: a view would keep
    # the byte tensor (and so the mapping) as its `_base` even after sleep mode swaps
    # the tensor's memory out (engine/sleep_mode.py).
    storage = torch.frombuffer(region, dtype=torch.uint8).untyped_storage()
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
