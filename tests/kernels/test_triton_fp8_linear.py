"""The Triton FP8 linear layer against kernels/fp8.py's `dequantize` and `F.linear`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.llm import LLM
from engine.models.linear import scratch_bytes
from kernels import fp8
from kernels.fp8 import Fp8Block, dequantize
from kernels.triton_fp8_linear import dequantize_fp8, fp8_linear

from ..engine.quantized_variants import (
    assert_backends_agree,
    quantize_fp8,
    write_compressed_tensors_variant,
    write_fp8_variant,
)
from .tolerances import DTYPES, assert_close


def _random_fp8(
    out_features: int, in_features: int, block: Fp8Block, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values of ordinary magnitudes (|v| up to ~30) and scales of ~1/(10 sqrt(in))."""
    values = (torch.randn(out_features, in_features, generator=gen) * 8).to(torch.float8_e4m3fn)
    scales = torch.rand(*block.scales_shape(out_features, in_features), generator=gen)
    return values.view(torch.uint8), (0.5 + scales) / (10 * in_features**0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows,out_features,in_features,block",
    # One decode row; a few rows over tiles cut short at both edges; a prefill chunk
    # through the GEMM's widest row blocks; 128 x 128 tiles, as the releases use.
    [
        (1, 96, 80, (32, 32)),
        (5, 70, 100, (16, 24)),
        (40, 64, 96, (64, 32)),
        (3, 128, 256, (128, 128)),
    ],
)
def test_fp8_linear_matches_the_dequantized_matrix(
    device: torch.device,
    dtype: torch.dtype,
    rows: int,
    out_features: int,
    in_features: int,
    block: tuple[int, int],
) -> None:
    gen = torch.Generator().manual_seed(rows + out_features)
    tiles = Fp8Block(*block)
    values, scales = _random_fp8(out_features, in_features, tiles, gen)
    x = torch.randn(rows, in_features, generator=gen).to(device, dtype)
    bias = torch.randn(out_features, generator=gen).to(device, dtype)
    values, scales = values.to(device), scales.to(device)
    plain = dequantize(values, scales, tiles, dtype)
    copy = dequantize_fp8(values, scales, tiles, dtype)
    if dtype == torch.bfloat16 and device.type == "cpu":
        assert_close(copy, plain)  # the interpreter truncates fp32 -> bf16; a GPU rounds
    else:
        assert torch.equal(copy, plain)
    for with_bias in (None, bias):
        got = fp8_linear(x, values, scales, tiles, with_bias)
        assert got.dtype == dtype and got.shape == (rows, out_features)
        assert_close(got, F.linear(x, plain, with_bias))


def test_long_inputs_take_the_dequantized_copy(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FP8_GEMM_MAX_ROWS the matrix is dequantized once and multiplied by torch; the
    batch's leading dimensions are kept either way."""
    monkeypatch.setattr(fp8, "FP8_GEMM_MAX_ROWS", 4)
    gen = torch.Generator().manual_seed(1)
    tiles = Fp8Block(16, 16)
    values, scales = (t.to(device) for t in _random_fp8(48, 32, tiles, gen))
    plain = dequantize(values, scales, tiles, torch.float32)
    for shape in ((2, 3, 32), (1, 2, 32)):  # 6 rows: the copy; 2: the GEMM
        x = torch.randn(*shape, generator=gen).to(device)
        got = fp8_linear(x, values, scales, tiles)
        assert got.shape == (*shape[:-1], 48)
        assert_close(got, F.linear(x, plain))
    assert fp8_linear(x[:0], values, scales, tiles).shape == (0, 2, 48)


@pytest.mark.slow  # ~10 s each in Triton's interpreter
@pytest.mark.parametrize("scheme", ["tiles 16", "tiles 24", "channel", "tensor"])
def test_an_fp8_checkpoint_keeps_its_projections_fp8_on_triton(
    scheme: str,
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the Triton backend an FP8 checkpoint's projections stay FP8 (bytes and scales)
    and give the torch backend's greedy tokens on the dequantized weights, and their
    logprobs and the prompts' to fp32's rounding. In 16-row tiles every projection
    stays FP8; in 24-row tiles q/k/v (64, 32, 32 rows) and gate/up (128 each) have tiles
    across two parts, so those two are dequantized as they load. compressed-tensors'
    scales per output channel or per matrix become a scale per row, a fused
    projection's parts each spreading their own over their rows. An FP8 LM head is
    dequantized (logits are not taken through a Linear's forward). Per channel, prompt
    chunks past 4 rows take the dequantized copy, as long ones do past 256."""
    folder, reference = tmp_path / "fp8", tmp_path / "reference"
    source = make_random_model("llama")
    if scheme == "channel":
        monkeypatch.setattr(fp8, "FP8_GEMM_MAX_ROWS", 4)
    if scheme.startswith("tiles"):
        # The LM head in FP8 too: read by compute_logits, so dequantized as it loads.
        write_fp8_variant(source, folder, reference, [int(scheme.split()[1])] * 2, lm_head=True)
    else:
        write_compressed_tensors_variant(source, folder, reference, scheme)

    def check(backend: str, llm: LLM) -> None:
        layer = llm.engine.runner.model.layers[0]
        kept = {
            name
            for name, linear in (
                ("qkv", layer.self_attn.qkv_proj),
                ("o", layer.self_attn.o_proj),
                ("gate_up", layer.mlp.gate_up_proj),
                ("down", layer.mlp.down_proj),
            )
            if linear.weight.dtype == torch.uint8
        }
        assert llm.engine.runner.model.logits_weight.dtype == torch.float32
        if backend == "torch":
            assert not kept
        else:
            everything = {"qkv", "o", "gate_up", "down"}
            assert kept == ({"o", "down"} if scheme == "tiles 24" else everything)
        # The largest dequantized copy, kept out of the KV cache: gate/up's [256, 64]
        # or, where only o and down stay FP8, down's [64, 128].
        scratch = {"torch": 0, "triton": 64 * 128 * 4 if scheme == "tiles 24" else 256 * 64 * 4}
        model = llm.engine.runner.model
        assert scratch_bytes(model, torch.float32, 2048) == scratch[backend]
        # No step past the GEMM's rows (4 here per channel, else 256): no copy to keep.
        assert scratch_bytes(model, torch.float32, fp8.FP8_GEMM_MAX_ROWS) == 0

    assert_backends_agree(folder, check)


def test_an_fp8_encoder_loads_on_triton(tmp_path: Path) -> None:
    """An FP8 BERT (an encoder: no decoder layers, no experts) on the Triton backend
    embeds as the torch backend does; looking for experts once read every layer's `mlp`,
    which an encoder's layers do not have."""
    import json

    from safetensors.torch import load_file, save_file

    from tests.encoder_models import make_encoder

    folder = tmp_path / "bert"
    make_encoder(folder, "BertModel", pooling="mean")
    weights = load_file(folder / "model.safetensors")
    for name in [n for n in weights if n.endswith("intermediate.dense.weight")]:
        weights[name], weights[name + "_scale_inv"] = quantize_fp8(weights[name].float(), [16, 16])
    save_file(weights, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [16, 16]}
    (folder / "config.json").write_text(json.dumps(config))
    embeddings = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(folder), attention_backend=backend, dtype="float32", num_kv_blocks=32)
        embeddings[backend] = torch.tensor(llm.embed([[5, 6, 7, 8]])[0].embedding)
    assert_close(embeddings["triton"], embeddings["torch"])
