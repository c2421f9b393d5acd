"""The Triton backend end to end: mixed batches, backend selection, and a whole engine.

The engine test runs a tiny random Llama through every Triton kernel (under
the interpreter on CPU) with chunked prefill, decodes and prefills in one
step, and a prefix-cache hit, and must produce the torch backend's greedy
tokens exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.decode_graphs import DecodeGraphs
from engine.llm import LLM, greedy
from engine.pooling_params import PoolingParams
from kernels.backend import select_attention_backend
from kernels.linear import linear_method_for, onednn_linear_available
from kernels.torch_attention import TorchAttentionBackend
from kernels.triton_attention import TritonAttentionBackend

from ..encoder_models import make_encoder
from ..engine.quantized_variants import write_kv_cache_scales_variant
from .paged import make_paged_batch
from .tolerances import DTYPES, assert_close

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
@pytest.mark.parametrize("block_size", [8, 32])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_mixed_batch_matches_torch_backend(
    device: torch.device, dtype: torch.dtype, block_size: int, heads: int, kv_heads: int
) -> None:
    batch = make_paged_batch(
        [(9, 1), (0, 1), (70, 1), (0, 7), (0, 7), (13, 6), (16, 1 + block_size), (1, 3)],
        block_size=block_size,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=32,
        dtype=dtype,
        device=device,
        seed=block_size + heads,
    )
    scale = 32**-0.5
    results = []
    for backend in (TorchAttentionBackend(device), TritonAttentionBackend(device, 32)):
        k_cache, v_cache = batch.key_cache.clone(), batch.value_cache.clone()
        metadata = backend.prepare(batch.inputs)
        out = backend.forward(
            batch.query, batch.key, batch.value, k_cache, v_cache, metadata, scale
        )
        results.append((out, k_cache, v_cache))
    (expected, k_ref, v_ref), (out, k_cache, v_cache) = results
    assert_close(out, expected)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_selection() -> None:
    cpu = torch.device("cpu")
    assert select_attention_backend(cpu).name == "torch"
    cpu_ops = select_attention_backend(cpu, "torch").ops
    # On CPU the torch backend's matmuls run on oneDNN where torch has it.
    assert cpu_ops.linear is linear_method_for(cpu)
    assert cpu_ops.name == ("torch+onednn" if onednn_linear_available() else "torch")
    if not torch.cuda.is_available():  # TRITON_INTERPRET=1 (conftest) only without a GPU
        forced = select_attention_backend(cpu, "triton")
        assert forced.name == "triton" and forced.ops.name == "triton"
    # The default on CUDA (constructing the backend touches no GPU).
    assert select_attention_backend(torch.device("cuda")).name == "triton"
    with pytest.raises(ValueError, match="choose from"):
        select_attention_backend(cpu, "flash")


@pytest.mark.parametrize(
    "partition,max_model_len,caps",
    [
        (512, 8192, [512, 2048, 8192]),
        (512, 512, [512]),
        (512, 300, [300]),
        (16, 256, [16, 64, 256]),
        (512, 131072, [512, 2048, 8192, 32768, 131072]),
    ],
)
def test_graph_context_caps(
    device: torch.device, partition: int, max_model_len: int, caps: list[int]
) -> None:
    backend = TritonAttentionBackend(device, partition_size=partition)
    assert backend.graph_context_caps(max_model_len) == caps


def test_forcing_triton_on_cpu_without_the_interpreter_says_how(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        select_attention_backend(torch.device("cpu"), "triton")


WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # as if triton were missing: `import triton` raises
import torch
import kernels, kernels.backend, engine.llm_engine
from kernels.backend import select_attention_backend
assert select_attention_backend(torch.device("cpu")).name == "torch"
assert select_attention_backend(torch.device("cuda")).name == "torch"  # warns, falls back
try:
    select_attention_backend(torch.device("cpu"), "triton")
except RuntimeError as exc:
    assert "triton cannot be imported" in str(exc), exc
else:
    raise AssertionError("forcing triton without triton must fail")
print("ok")
"""


def test_cpu_engine_works_without_triton() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRITON],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow  # ~15 s: a whole engine, every kernel in Triton's interpreter
def test_engine_greedy_output_matches_torch_backend(
    make_random_model: Callable[[str], Path],
) -> None:
    """torch, Triton, and Triton with decode steps run from static buffers as a recorded
    CUDA graph replays them (recording itself needs a GPU): the same greedy tokens."""
    folder = make_random_model("llama")
    prompts = [
        "The capital of France is",
        "Once upon a time, in a land far away, there lived a",
        "1, 2, 3, 4, 5, 6, 7, 8,",
    ]
    outputs = {}
    for name in ("torch", "triton", "triton-graphs"):
        llm = LLM(
            str(folder),
            attention_backend=name.removesuffix("-graphs"),
            dtype="float32",
            block_size=8,
            num_kv_blocks=64,
            max_model_len=256,
            max_num_batched_tokens=12,  # chunked prefill, mixed with decodes
            max_num_seqs=4,  # recorded sizes 1, 2, 4: three prompts decode padded to 4
        )
        runner = llm.engine.runner
        assert runner.backend.name == name.removesuffix("-graphs")
        assert runner.model.norm.rms_norm is runner.backend.ops.rms_norm
        assert runner.decode_graphs is None  # on CPU: only when asked, as here
        if name == "triton-graphs":
            replay_decodes(llm, max_num_seqs=4, max_model_len=256, block_size=8)
        ids = [llm.tokenizer.encode(p) for p in prompts]
        first = llm.generate(ids, greedy(6, ignore_eos=True))
        # The same prompts again: their full blocks now come from the prefix cache.
        again = llm.generate(ids[1:2], greedy(6, ignore_eos=True))
        assert again[0].num_cached_tokens > 0
        outputs[name] = [r.token_ids for r in first + again]
        if runner.decode_graphs is not None:
            # Decode-only steps of 3 (padded to 4) and of 1 ran from the buffers, with
            # contexts under one partition (cap 16) and over it (cap 64, the combine kernel).
            used = runner.decode_graphs.steps_by_key
            assert {1, 4} <= {size for size, _ in used}
            assert {cap for _, cap in used} == {16, 64}
    assert outputs["triton"] == outputs["torch"]
    assert outputs["triton-graphs"] == outputs["torch"]


@pytest.mark.slow  # ~12 s: three small engines, two in Triton's interpreter
def test_fp8_kv_cache_engine_matches_torch_backend(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """An FP8 KV cache with a checkpoint's calibrated scales, one layer's keys scaled so
    far down that some saturate: Triton writes and reads the torch backend's codes, so
    the greedy tokens and their logprobs agree, decodes run from graph buffers too."""
    folder = tmp_path / "calibrated"
    write_kv_cache_scales_variant(make_random_model("llama"), folder, {0: (2**-6, 2**-5)})
    prompts = [[5, 17, 300, 9, 44, 1000, 7, 61, 2048, 3, 11], [400, 12, 9, 33]]
    outputs = {}
    for backend in ("torch", "triton", "triton-graphs"):
        llm = LLM(
            str(folder),
            attention_backend=backend.removesuffix("-graphs"),
            kv_cache_dtype="fp8",
            block_size=8,
            num_kv_blocks=32,
            max_model_len=128,
            max_num_batched_tokens=6,  # chunked prefill, mixed with decodes
            max_num_seqs=2,
        )
        if backend == "triton-graphs":
            replay_decodes(llm, max_num_seqs=2, max_model_len=128, block_size=8)
        results = llm.generate(prompts, greedy(5, ignore_eos=True, logprobs=1))
        if llm.engine.runner.decode_graphs is not None:
            assert llm.engine.runner.decode_graphs.steps_by_key  # decodes ran from buffers
        outputs[backend] = [
            (r.token_ids, torch.tensor([lp.logprob for lp in r.choices[0].logprobs]))
            for r in results
        ]
    for backend in ("triton", "triton-graphs"):
        for (tokens, logprobs), (ref_tokens, ref_logprobs) in zip(
            outputs[backend], outputs["torch"], strict=True
        ):
            assert tokens == ref_tokens
            torch.testing.assert_close(logprobs, ref_logprobs, atol=1e-4, rtol=0)


def replay_decodes(llm: LLM, max_num_seqs: int, max_model_len: int, block_size: int) -> None:
    """Decode steps from here on run from static buffers as a recorded CUDA graph replays
    them (recording needs a GPU), with partitions of 16 (the combine kernel too)."""
    runner = llm.engine.runner
    runner.backend.partition_size = 16
    runner.decode_graphs = DecodeGraphs(
        runner.model,
        runner.kv_caches,
        runner.backend,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        block_size=block_size,
        device=runner.device,
        capture=False,
    )
    runner.decode_graphs.record()


@pytest.mark.slow  # ~8 s each in Triton's interpreter
@pytest.mark.parametrize(
    "family",
    ["qwen3", "gemma2", "gemma3", "phi3", "olmo2", "qwen2_moe", "qwen3_moe", "gpt_oss"],
)
def test_model_variants_through_triton_match_torch(
    family: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Qwen3 and Gemma 3 normalise each query and key head with the backend's RMSNorm
    (strided slices of the fused projection), one layer of each slides over a window
    (6 positions for Qwen3 here, Gemma's 8 with its own rotation), Gemma's MLP is
    GELU-and-mul, Gemma 2 soft-caps its attention scores in the kernels, OLMo 2 norms
    all query (and all key) heads at once over a strided slice, Phi-3 rotates half of
    each head (a strided view the rotary kernel turns in place), Qwen3-MoE routes
    through experts (Triton's grouped GEMMs, which need no host sync, so its decodes
    also run as a replayed graph would), Qwen2-MoE beside a gated shared expert: the
    Triton path gives the torch path's tokens. gpt-oss adds attention sinks in the
    kernels and experts with biases and a clamped SwiGLU, also from graph buffers."""
    source = make_random_model(family)
    folder = tmp_path / f"{family}-windowed"
    folder.mkdir()
    for file in source.iterdir():
        if file.name != "config.json":
            (folder / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    if family == "qwen3":
        config.pop("layer_types", None)
        config.update(sliding_window=6, use_sliding_window=True, max_window_layers=1)
    (folder / "config.json").write_text(json.dumps(config))
    windows = {
        "qwen3": [None, 6],
        "gemma2": [8, None],
        "gemma3": [8, None],
        "phi3": [24, 24],
        "olmo2": [None, None],
        "qwen2_moe": [None] * 2,
        "qwen3_moe": [None] * 2,
        "gpt_oss": [8, None],
    }[family]
    outputs = {}
    graphs = family in ("qwen3_moe", "gpt_oss")
    names = ("torch", "triton", "triton-graphs") if graphs else ("torch", "triton")
    for name in names:
        llm = LLM(
            str(folder),
            attention_backend=name.removesuffix("-graphs"),
            dtype="float32",
            block_size=8,
            num_kv_blocks=32,
            max_model_len=128,
            max_num_batched_tokens=12,
        )
        layers = llm.engine.runner.model.layers
        if family in ("qwen3", "gemma3", "olmo2"):
            assert layers[0].self_attn.q_norm.rms_norm is llm.engine.runner.backend.ops.rms_norm
        assert layers[0].self_attn.softcap == (4.0 if family == "gemma2" else None)
        assert [layer.self_attn.window for layer in layers] == windows
        if name == "triton" and torch.cuda.is_available():
            # Recorded for real on a GPU, MoE models included (no host sync in them).
            assert llm.engine.runner.decode_graphs is not None
        if name == "triton-graphs":
            replay_decodes(llm, max_num_seqs=2, max_model_len=128, block_size=8)
        ids = [llm.tokenizer.encode(p) for p in ("The capital of France is", "1, 2, 3,")]
        outputs[name] = [r.token_ids for r in llm.generate(ids, greedy(5, ignore_eos=True))]
        if name == "triton-graphs":
            assert llm.engine.runner.decode_graphs.steps_by_key  # decodes replayed
    assert all(tokens == outputs["torch"] for tokens in outputs.values())


@pytest.mark.slow  # ~8 s: a small encoder, once in Triton's interpreter
def test_an_encoder_through_triton_matches_torch(tmp_path: Path) -> None:
    """BERT's step is not causal: the prefill kernel lets every row see its whole prompt
    (prompts of several lengths in one step, one shorter than a block). A cross-encoder's
    logits (pairs with their token types, and one text) agree with the torch backend."""
    make_encoder(tmp_path, "BertForSequenceClassification", num_labels=1)
    results = []
    for name in ("torch", "triton"):
        llm = LLM(str(tmp_path), attention_backend=name, dtype="float32", block_size=8)
        tokenizer = llm.tokenizer.hf_tokenizer
        encoded = [
            tokenizer(a, b, return_token_type_ids=True)
            for a, b in (("the capital of france", "paris"), ("a", "city of people"))
        ]
        prompts = [e["input_ids"] for e in encoded] + [[2, 5, 3]]
        params = [PoolingParams(segment_start=e["token_type_ids"].index(1)) for e in encoded]
        results.append([r.embedding for r in llm.embed(prompts, [*params, PoolingParams()])])
    for ours, theirs in zip(*results, strict=True):
        assert_close(theirs, ours)
