"""How close a Triton kernel must be to its torch reference, per dtype, and why.

Inputs in these tests are standard normal, so values are mostly below 4 in
magnitude. In fp32 a kernel and torch differ only in the order of sums and
in exp2 versus exp: errors measured ~1e-6, the bound is 1e-5. In fp16 and
bf16 both sides round intermediates to the storage dtype, at different
points (attention rounds the softmax weights before P@V as flash attention
does; torch rounds each product in rotary), so they may differ by about two
units in the last place of a value near 2: fp16 2 * 2^-9, bf16 2 * 2^-6.
Triton's CPU interpreter also truncates fp32 -> bf16 where a GPU rounds to
nearest, which the bf16 bound already covers.
"""

from __future__ import annotations

import pytest
import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 4e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 3.2e-2, "rtol": 1.6e-2},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCES[expected.dtype])


DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
