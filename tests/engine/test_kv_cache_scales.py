"""A checkpoint's calibrated KV-cache scales reach the layers they were saved for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.kv_cache_scales import kv_scale_target, with_scale
from engine.llm import LLM, greedy
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
        ("layers.2.self_attn.k_proj.k_scale", (2, "k")),  # ModelOpt
        ("layers.2.self_attn.v_proj.v_scale", (2, "v")),
        ("layers.7.self_attn.attn.k_scale", (7, "k")),  # vLLM's own names
        ("layers.7.self_attn.attn.kv_scale", (7, "kv")),
        ("layers.2.self_attn.k_proj.v_scale", None),
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


def test_a_kv_cache_scheme_checkpoint_loads_its_scales_and_attention_uses_them(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    source = make_random_model("llama")
    folder = tmp_path / "calibrated"
    # Layer 0's keys (|k| up to ~10) over 2^-7 pass e4m3's 448: they saturate.
    write_kv_cache_scales_variant(source, folder, {0: (2**-7, 2**-6)})
    results = []
    for model in (folder, source):
        llm = LLM(str(model), kv_cache_dtype="fp8", num_kv_blocks=16, max_model_len=64)
        assert llm.engine.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
        results.append(llm.generate([[5, 17, 300, 9, 44]], greedy(1, logprobs=3))[0])
    layers = llm.engine.runner.model.layers
    assert [layer.self_attn.kv_scales for layer in layers] == [UNIT_SCALES, UNIT_SCALES]
    calibrated = LLM(str(folder), kv_cache_dtype="fp8", num_kv_blocks=16, max_model_len=64)
    layers = calibrated.engine.runner.model.layers
    assert [layer.self_attn.kv_scales for layer in layers] == [KvScales(2**-7, 2**-6), UNIT_SCALES]
    # The scales reach attention: the same weights score the next token otherwise.
    top = [r.choices[0].logprobs[0].top for r in results]
    assert top[0] != top[1]


def test_scales_for_layers_the_model_lacks_or_not_positive_are_refused(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    source = make_random_model("llama")
    write_kv_cache_scales_variant(source, tmp_path / "extra", {9: (0.5, 0.5)})
    with pytest.raises(ValueError, match=r"layers\.9\.self_attn\.k_scale.*no layer 9"):
        LLM(str(tmp_path / "extra"), num_kv_blocks=16, max_model_len=64)
    write_kv_cache_scales_variant(source, tmp_path / "zero", {0: (0.0, 0.5)})
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.k_scale.*finite and positive"):
        LLM(str(tmp_path / "zero"), num_kv_blocks=16, max_model_len=64)
