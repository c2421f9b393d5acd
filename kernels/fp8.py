"""Block-scaled FP8 weights: e4m3 values with one fp32 scale per tile of the matrix.

The format of DeepSeek's and Qwen's `-FP8` releases (weight = value * scale,
one scale per `block` = (rows, cols) tile, the last tiles cut short), and how
the Triton backend keeps their linear layers in memory: a byte a weight
instead of bf16's two, which halves what a decode step reads. The values are
held as uint8 (their e4m3 bits), not torch's float8 dtype, so that casting a
model to its dtype leaves them alone. `dequantize` is the reference the FP8
matmul is tested against (kernels/triton_fp8_linear.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Rows up to which the Triton FP8 linear multiplies the FP8 weights directly; longer
# inputs take a dequantized copy (kernels/triton_fp8_linear.py).
FP8_GEMM_MAX_ROWS = 256
# e4m3fn's largest finite value.
E4M3_MAX = 448.0
# Most values quantize_rows converts in fp32 at once (16M: 64 MB).
QUANTIZE_CHUNK = 1 << 24


@dataclass(frozen=True)
class Fp8Block:
    """The tile one scale covers: (rows, cols) of the [out, in] matrix."""

    rows: int
    cols: int

    def scales_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        return (-(-out_features // self.rows), -(-in_features // self.cols))


def empty_fp8(
    shape: tuple[int, ...], block: Fp8Block, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised e4m3 bits (uint8, `shape`: [..., out, in]) and their fp32 tile scales
    ([..., *block.scales_shape(out, in)]), for weights to be filled in."""
    *leading, rows, cols = shape
    values = torch.empty(shape, dtype=torch.uint8, device=device)
    return values, torch.empty(*leading, *block.scales_shape(rows, cols), device=device)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [out, in] as e4m3 bits (uint8) and one fp32 scale per row ([out, 1]): each
    row's largest magnitude becomes 448, e4m3's largest value (an all-zero row keeps a
    tiny scale and zero codes). What --quantization fp8 makes of a full-precision
    checkpoint; a scale per row (vLLM's online FP8 takes one per matrix) keeps rows of
    small weights beside rows of large ones from losing their precision. A few rows at a
    time: the fp32 work stays under QUANTIZE_CHUNK values, not three copies of a whole
    (possibly gigabyte) matrix."""
    rows, cols = weight.shape
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(rows, 1, dtype=torch.float32, device=weight.device)
    for part in row_chunks(rows, cols):
        values = weight[part].float()
        scale = values.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12) / E4M3_MAX
        # Not in place: for fp32 weights `values` is the weight itself.
        chunk = (values / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        codes[part] = chunk.view(torch.uint8)
        scales[part] = scale
    return codes, scales


def row_chunks(rows: int, cols: int) -> Iterator[slice]:
    """Slices of a [rows, cols] matrix's rows holding at most QUANTIZE_CHUNK values each."""
    step = max(1, QUANTIZE_CHUNK // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, start + step)


def dequantize(
    values: torch.Tensor, scales: torch.Tensor, block: Fp8Block, dtype: torch.dtype
) -> torch.Tensor:
    """values [out, in] (e4m3: uint8 bits or float8_e4m3fn) times their tiles' scales, in
    fp32, rounded once to `dtype`."""
    if values.dtype == torch.uint8:
        values = values.view(torch.float8_e4m3fn)
    if values.dim() != 2 or tuple(scales.shape) != block.scales_shape(*values.shape):
        raise ValueError(
            f"a {tuple(values.shape)} weight in {(block.rows, block.cols)} tiles has "
            f"{block.scales_shape(*values.shape)} scales, not {tuple(scales.shape)}"
        )
    rows, cols = values.shape
    scale = scales.to(torch.float32).repeat_interleave(block.rows, 0)[:rows]
    scale = scale.repeat_interleave(block.cols, 1)[:, :cols]
    return (values.to(torch.float32) * scale).to(dtype)


@dataclass(frozen=True)
class Fp8Experts:
    """A stack of expert matrices [E, N, K] in FP8: `values` their e4m3 bits (uint8),
    `scales` [E, *block.scales_shape(N, K)] fp32, one per `block` tile of each."""

    values: torch.Tensor
    scales: torch.Tensor
    block: Fp8Block

    def __post_init__(self) -> None:
        experts, rows, cols = self.values.shape
        expected = (experts, *self.block.scales_shape(rows, cols))
        if self.values.dtype != torch.uint8 or tuple(self.scales.shape) != expected:
            raise ValueError(
                f"FP8 experts {tuple(self.values.shape)} ({self.values.dtype}) in "
                f"{(self.block.rows, self.block.cols)} tiles need uint8 values and "
                f"{expected} scales, not {tuple(self.scales.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def expert(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        """One matrix, dequantized: [N, K] in `dtype`."""
        return dequantize(self.values[index], self.scales[index], self.block, dtype)
