"""A checkpoint's calibrated KV-cache scales reach the layers they were saved for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.kv_cache_scales import kv_scale_target, with_scale
from engine.llm import LLM
from kernels.kv_cache_dtype import UNIT_SCALES, KvScales

from .quantized_variants import write_kv_cache_scales_variant


@pytest.mark.parametrize(
    "name,target",
    [
        ("layers.3.self_attn.k_scale", (3, "k")),
        ("layers.0.self_attn.v_scale", (0, "v")),
        ("layers.12.self_attn.kv_scale", (12, "kv")),
        ("layers.5.self_attn.k_proj.output_scale", (5, "k")),
        ("layers.5.self_attn.v_proj.output_scale", (5, "v")),
        ("layers.5.self_attn.q_proj.output_scale", None),
        ("layers.5.self_attn.k_proj.weight_scale", None),
        ("layers.5.mlp.down_proj.input_scale", None),
    ],
)
def test_scale_names_of_every_export(name: str, target: tuple[int, str] | None) -> None:
    assert kv_scale_target(name) == target


def test_scales_per_head_become_the_largest_and_kv_sets_both() -> None:
    assert with_scale(UNIT_SCALES, "k", torch.tensor([0.125, 0.375, 0.25])) == KvScales(0.375, 1.0)
    assert with_scale(KvScales(0.5, 0.5), "v", torch.tensor(2.0)) == KvScales(0.5, 2.0)
    assert with_scale(KvScales(0.5, 0.5), "kv", torch.tensor([3.0])) == KvScales(3.0, 3.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_scales_must_be_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="finite and positive"):
        KvScales(bad, 1.0)


def test_a_kv_cache_scheme_checkpoint_loads_its_scales(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = tmp_path / "calibrated"
    write_kv_cache_scales_variant(make_random_model("llama"), folder, {0: (2**-7, 2**-6)})
    llm = LLM(str(folder), kv_cache_dtype="fp8", num_kv_blocks=16, max_model_len=64)
    layers = llm.engine.runner.model.layers
    assert [layer.self_attn.kv_scales for layer in layers] == [KvScales(2**-7, 2**-6), UNIT_SCALES]
    assert llm.engine.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
