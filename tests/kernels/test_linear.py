"""The CPU linear method (oneDNN over packed weights) against `F.linear`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.linear import (
    ONEDNN_LINEAR,
    TORCH_LINEAR,
    linear_method_for,
    onednn_linear,
    onednn_linear_available,
    onednn_packable_dtypes,
    pack_onednn,
)

needs_onednn = pytest.mark.skipif(
    not onednn_linear_available(), reason="this torch build has no oneDNN"
)

# fp32 matmuls with different blocking sum in different orders: the error grows
# with the reduction length (here ≤ 1536) times fp32's epsilon, well below 1e-4
# relative on unit-scale inputs.
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4


@needs_onednn
@pytest.mark.parametrize("rows", [0, 1, 3, 16, 64, 130])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("out_features", "in_features"), [(960, 576), (576, 1536), (7, 5)])
def test_packed_matches_f_linear(
    rows: int, with_bias: bool, out_features: int, in_features: int
) -> None:
    gen = torch.Generator().manual_seed(rows * 31 + out_features)
    weight = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    bias = torch.randn(out_features, generator=gen) if with_bias else None
    x = torch.randn(rows, in_features, generator=gen)
    packed = pack_onednn(weight)
    assert packed.is_mkldnn
    got = onednn_linear(x, packed, bias)
    torch.testing.assert_close(got, F.linear(x, weight, bias), atol=FP32_ATOL, rtol=FP32_RTOL)


@needs_onednn
def test_inputs_of_any_rank_and_stride() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 32, generator=gen)
    packed = pack_onednn(weight)
    x3 = torch.randn(2, 5, 32, generator=gen)
    torch.testing.assert_close(
        onednn_linear(x3, packed), F.linear(x3, weight), atol=FP32_ATOL, rtol=FP32_RTOL
    )
    strided = torch.randn(10, 32, generator=gen)[::2]
    torch.testing.assert_close(
        onednn_linear(strided, packed), F.linear(strided, weight), atol=FP32_ATOL, rtol=FP32_RTOL
    )


@needs_onednn
def test_bf16_is_packed_where_the_cpu_can_and_multiplies_right_either_way() -> None:
    """oneDNN reorders bf16 only on CPUs with AVX-512 or AVX-NE-CONVERT (torch raises
    on plain AVX2); elsewhere the weight stays plain and `F.linear` multiplies it."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(48, 64, generator=gen).bfloat16()
    x = torch.randn(4, 64, generator=gen).bfloat16()
    packed = pack_onednn(weight)
    cpu_packs_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert (torch.bfloat16 in onednn_packable_dtypes()) is cpu_packs_bf16
    assert packed.is_mkldnn is cpu_packs_bf16
    # bf16 keeps 8 mantissa bits: products summed over 64 terms agree to ~1e-2 relative.
    torch.testing.assert_close(
        onednn_linear(x, packed).float(), F.linear(x, weight).float(), atol=0.1, rtol=2e-2
    )


def test_weights_oneDNN_cannot_take_stay_plain() -> None:
    weight = torch.randn(8, 4).half()
    assert pack_onednn(weight) is weight
    x = torch.randn(2, 4).half()
    torch.testing.assert_close(onednn_linear(x, weight), F.linear(x, weight))


def test_torch_method_keeps_the_weight() -> None:
    weight = torch.randn(8, 4)
    assert TORCH_LINEAR.pack(weight) is weight


def test_method_per_device() -> None:
    expected = ONEDNN_LINEAR if onednn_linear_available() else TORCH_LINEAR
    assert linear_method_for(torch.device("cpu")) is expected
    assert linear_method_for(torch.device("cuda")) is TORCH_LINEAR
