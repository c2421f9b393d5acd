"""Quantized copies of a random model for the checkpoint-format tests (FP8, MXFP4)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from engine.fp8_checkpoint import dequantize
from engine.llm import LLM, greedy
from kernels import fp8
from kernels.fp8 import Fp8Block, quantize_rows

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
MXFP4 = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}


def write_variants(
    source: Path,
    variants: dict[Path, tuple[dict[str, torch.Tensor], dict[str, Any] | None]],
) -> None:
    """Each folder gets `source`'s files (linked) with its own weights, and `source`'s
    config with that quantization_config (None: none)."""
    config = json.loads((source / "config.json").read_text())
    for folder, (weights, quantization) in variants.items():
        folder.mkdir()
        for file in source.iterdir():
            if file.name not in ("config.json", "model.safetensors"):
                (folder / file.name).symlink_to(file)
        save_file(weights, folder / "model.safetensors")
        written = (
            config if quantization is None else {**config, "quantization_config": quantization}
        )
        (folder / "config.json").write_text(json.dumps(written))


def assert_same_outputs(quantized: Path, reference: Path, **quantized_args: Any) -> None:
    """Token for token and logprob for logprob (prompts' too), the two folders' models;
    `quantized_args`: engine arguments for the first."""
    torch.manual_seed(5)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (6, 40)]
    params = greedy(12, min_tokens=12, logprobs=3, prompt_logprobs=3)
    results = []
    for folder, args in ((quantized, quantized_args), (reference, {})):
        llm = LLM(str(folder), kv_cache_memory=64 << 20, **args)
        results.append(llm.generate(prompts, params))
    for ours, theirs in zip(*results, strict=True):
        assert ours.token_ids == theirs.token_ids
        logprobs = ours.choices[0].logprobs
        assert logprobs and logprobs == theirs.choices[0].logprobs
        assert ours.prompt_logprobs == theirs.prompt_logprobs


def assert_backends_agree(
    folder: Path, check: Callable[[str, LLM], None], **engine_args: Any
) -> None:
    """The torch and the Triton backends (fp32, small steps) on one quantized checkpoint:
    `check(backend, llm)` inspects each engine; then both must give the same greedy
    tokens, and logprobs (the sampled tokens', the top ones', the prompts') equal to
    fp32's rounding: two backends' kernels on the same weights."""
    outputs = {}
    for backend in ("torch", "triton"):
        llm = LLM(
            str(folder),
            attention_backend=backend,
            dtype="float32",
            block_size=8,
            num_kv_blocks=32,
            max_model_len=128,
            max_num_batched_tokens=24,
            **engine_args,
        )
        check(backend, llm)
        ids = [llm.tokenizer.encode(p) for p in ("The capital of France is", "1, 2, 3, 4, 5,")]
        params = greedy(5, ignore_eos=True, logprobs=2, prompt_logprobs=2)
        outputs[backend] = llm.generate(ids, params)
    for mine, other in zip(outputs["triton"], outputs["torch"], strict=True):
        assert mine.token_ids == other.token_ids
        rows = []
        for output in (mine, other):
            generated, prompt = output.choices[0].logprobs, output.prompt_logprobs
            assert generated and prompt
            steps = generated + prompt[1:]
            rows.append(torch.tensor([[t.logprob, *(lp for _, lp in t.top)] for t in steps]))
        torch.testing.assert_close(rows[0], rows[1], atol=1e-4, rtol=1e-4)


def write_mxfp4_variant(source: Path, mxfp4: Path, reference: Path) -> None:
    """`source` (a gpt-oss model) with random MXFP4 experts in `mxfp4`, as OpenAI's files
    store them (`*_blocks`/`*_scales`, [E, out, in / 32, 16]), and the weights they
    encode, as transformers dequantizes them, in the plain checkpoint of `reference`."""
    gen = torch.Generator().manual_seed(3)
    tensors = load_file(source / "model.safetensors")
    stored: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, cols, rows = tensor.shape  # stored [E, in, out]
            blocks, scales = _random_mxfp4(experts, rows, cols, gen)
            stored[name + "_blocks"], stored[name + "_scales"] = blocks, scales
            plain[name] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
            assert plain[name].shape == tensor.shape
        else:
            stored[name] = plain[name] = tensor
    write_variants(source, {mxfp4: (stored, MXFP4), reference: (plain, None)})


def _random_mxfp4(
    experts: int, rows: int, cols: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blocks [E, rows, cols / 32, 16] and scales of 2^-6 ... 2^-3 (weights of
    up to 0.75, like a trained model's)."""
    blocks = torch.randint(
        0, 256, (experts, rows, cols // 32, 16), dtype=torch.uint8, generator=gen
    )
    scales = torch.randint(121, 125, (experts, rows, cols // 32), dtype=torch.uint8, generator=gen)
    return blocks, scales


def quantize_fp8(weight: torch.Tensor, block: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix as such checkpoints store it: fp8 values and one fp32 scale per tile."""
    rows, cols = block
    out_dim, in_dim = weight.shape
    tiles = torch.zeros(-(-out_dim // rows), -(-in_dim // cols))
    for i in range(tiles.shape[0]):
        for j in range(tiles.shape[1]):
            tile = weight[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            tiles[i, j] = tile.abs().max().clamp(min=1e-12) / FP8_MAX
    scale = tiles.repeat_interleave(rows, 0)[:out_dim].repeat_interleave(cols, 1)[:, :in_dim]
    return (weight / scale).to(torch.float8_e4m3fn), tiles


def write_fp8_variant(
    source: Path, fp8: Path, reference: Path, block: list[int], lm_head: bool = False
) -> None:
    """`source` with every projection matrix in FP8 (lm_head, unless asked, and the
    embeddings kept, as the releases do) in `fp8`, and the weights that FP8 encodes, in
    fp32, in `reference`."""
    tensors = load_file(source / "model.safetensors")
    stored: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if _is_projection(name) or (lm_head and name == "lm_head.weight"):
            q, scale = quantize_fp8(tensor.float(), block)
            stored[name], stored[name + "_scale_inv"] = q, scale
            plain[name] = dequantize(q, scale, torch.float32, (block[0], block[1]))
        else:
            stored[name] = plain[name] = tensor
    quantization = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": block,
    }
    write_variants(source, {fp8: (stored, quantization), reference: (plain, None)})


def compressed_tensors_fp8_config(strategy: str, dynamic: bool) -> dict[str, object]:
    """llm-compressor's quantization_config for FP8 weights (`strategy`: "channel" or
    "tensor"), its activations dynamic or with static scales, lm_head left out."""
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None}
    activations = {**fp8, "dynamic": dynamic, "strategy": "token" if dynamic else "tensor"}
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {**fp8, "dynamic": False, "strategy": strategy},
                "input_activations": activations,
                "output_activations": None,
            }
        },
    }


def write_compressed_tensors_variant(
    source: Path,
    fp8: Path,
    reference: Path,
    strategy: str,
    config: dict[str, object] | None = None,
) -> None:
    """`source`'s projections as llm-compressor writes FP8 (static activations): e4m3
    weights with a bf16 `weight_scale` per output channel ([out, 1]) or per matrix,
    an `input_scale` each, and KV-cache scales beside the attention; the weights they
    encode, in fp32, in `reference`. `config`: another quantization_config for the same
    tensors (AutoFP8's, whose per-matrix scales go by the same names)."""
    tensors = load_file(source / "model.safetensors")
    stored: dict[str, torch.Tensor] = {}
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        stored[name] = plain[name] = tensor
        if _is_projection(name):
            weight = tensor.float()
            peak = weight.abs().amax(dim=1, keepdim=True)
            if strategy == "tensor":
                peak = peak.max().reshape(1)
            scale = (peak.clamp(min=1e-12) / FP8_MAX).to(torch.bfloat16)
            q = (weight / scale.float().reshape(-1, 1)).clamp(-FP8_MAX, FP8_MAX)
            stored[name] = q.to(torch.float8_e4m3fn)
            stored[name.removesuffix("weight") + "weight_scale"] = scale
            stored[name.removesuffix("weight") + "input_scale"] = torch.ones(1)
            plain[name] = stored[name].float() * scale.float().reshape(-1, 1)
        if name.endswith("self_attn.o_proj.weight"):
            attention = name.removesuffix("o_proj.weight")
            stored[attention + "k_scale"] = torch.ones(())
            stored[attention + "v_scale"] = torch.ones(())
    config = config or compressed_tensors_fp8_config(strategy, dynamic=False)
    write_variants(source, {fp8: (stored, config), reference: (plain, None)})


def _is_projection(name: str) -> bool:
    """A matrix the FP8 releases quantize: every projection, experts' too (Mixtral's
    named w1/w2/w3)."""
    mixtral_expert = re.search(r"\.experts\.\d+\.w[123]\.weight$", name)
    return name.endswith("proj.weight") or mixtral_expert is not None


def kv_cache_scheme_config() -> dict[str, object]:
    """llm-compressor's quantization_config for an FP8 KV cache alone (weights as they are)."""
    return {
        "quant_method": "compressed-tensors",
        "format": "dense",
        "quantization_status": "compressed",
        "config_groups": {},
        "kv_cache_scheme": {
            "num_bits": 8,
            "type": "float",
            "symmetric": True,
            "dynamic": False,
            "strategy": "tensor",
        },
    }


def write_kv_cache_scales_variant(
    source: Path, out: Path, scales: dict[int, tuple[float, float]]
) -> None:
    """`source` with calibrated KV-cache scales, as llm-compressor saves them: per layer
    index, (k_scale, v_scale) beside the attention."""
    stored = dict(load_file(source / "model.safetensors"))
    for layer, (k, v) in scales.items():
        stored[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(k)
        stored[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(v)
    write_variants(source, {out: (stored, kv_cache_scheme_config())})


def write_fp8_rounded_variant(source: Path, out: Path) -> None:
    """`source` with every projection (experts' too) replaced by what --quantization fp8
    makes of it, dequantized: e4m3 with a scale per row (kernels/fp8.py), back in the
    checkpoint's dtype. A plain checkpoint holding the online-quantized model's numbers."""
    stored = {}
    for name, tensor in load_file(source / "model.safetensors").items():
        if _is_projection(name) and "lm_head" not in name:
            codes, scales = quantize_rows(tensor)
            tensor = fp8.dequantize(codes, scales, Fp8Block(1, tensor.shape[1]), tensor.dtype)
        stored[name] = tensor
    write_variants(source, {out: (stored, None)})
