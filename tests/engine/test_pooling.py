"""Embeddings (the pooling runner): HF transformers' hidden states are the oracle.

The vector of a prompt must be what HF's base model computes for it alone,
pooled the same way, whatever else shares the batch and however the prompt
is chunked, preempted or found in the prefix cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from engine.llm import LLM, greedy
from engine.pooler_config import PoolerConfig, PoolerConfigError, PoolingType
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError

PROMPTS = [
    "The capital of France is",
    "A",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fib",
    "Once upon a time, in a land far away, there lived a king who had three daughters, "
    "each more curious than the last.",
    "日本の首都は",
]
# fp32 on both sides; the rest is summation order (batched matmuls, chunked attention).
ATOL = 2e-5


def hf_embedding(
    model: transformers.PreTrainedModel,
    ids: list[int],
    kind: PoolingType = PoolingType.LAST,
    normalize: bool = True,
    dimensions: int | None = None,
) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0]
    vector = {
        PoolingType.LAST: hidden[-1],
        PoolingType.MEAN: hidden.mean(dim=0),
        PoolingType.CLS: hidden[0],
    }[kind]
    if dimensions is not None:
        vector = vector[:dimensions]
    return F.normalize(vector, dim=-1) if normalize else vector


@pytest.fixture(scope="module")
def llama_dir(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("llama")


@pytest.fixture(scope="module")
def hf_llama(llama_dir: Path) -> transformers.PreTrainedModel:
    # A *ForCausalLM folder loads as its base model: the hidden states, no LM head.
    return transformers.AutoModel.from_pretrained(llama_dir, dtype=torch.float32).eval()


def embed_all(llm: LLM, prompts: list[list[int]], **params: object) -> list[torch.Tensor]:
    results = llm.embed(prompts, PoolingParams(**params))  # type: ignore[arg-type]
    vectors = [r.embedding for r in results]
    assert all(v is not None for v in vectors)
    return vectors  # type: ignore[return-value]


def test_last_token_pooling_matches_hf_in_one_batch(llama_dir: Path, hf_llama) -> None:
    llm = LLM(str(llama_dir), runner="pooling")
    with pytest.raises(ValueError, match="not a sequence classifier"):
        llm.classify(["x"])
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    for ids, ours in zip(prompts, embed_all(llm, prompts), strict=True):
        expected = hf_embedding(hf_llama, ids)
        assert ours.dtype == torch.float32 and ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
        assert abs(float(ours.norm()) - 1.0) < 1e-5


@pytest.mark.parametrize("kind", [PoolingType.MEAN, PoolingType.CLS, PoolingType.LAST])
def test_chunked_preempted_and_cached_prompts_pool_as_hf(
    llama_dir: Path, hf_llama, kind: PoolingType
) -> None:
    """A background prompt is prefilled in 8-token chunks; a foreground prompt arriving
    mid-way takes the 12-block cache and preempts it, so it is computed again. A second
    round finds the first's blocks cached: LAST may use them, MEAN and CLS must not
    (those rows would not be computed)."""
    llm = LLM(
        str(llama_dir),
        runner="pooling",
        pooler_config={"pooling_type": kind.value, "normalize": False},
        max_num_batched_tokens=16,
        background_priority=10,
        background_prefill_tokens=8,
        block_size=4,
        num_kv_blocks=12,
        max_model_len=48,
    )
    engine = llm.engine
    texts = [PROMPTS[3] + PROMPTS[0] + PROMPTS[4] * 3, PROMPTS[2] + PROMPTS[3]]
    background, foreground = (llm.tokenizer.encode(t)[:40] for t in texts)
    assert len(background) == len(foreground) == 40
    vectors: dict[str, torch.Tensor] = {}

    def drain(steps: int | None = None) -> None:
        while engine.has_unfinished() and steps != 0:
            for out in engine.step():
                if out.embedding is not None:
                    vectors[out.request_id] = out.embedding
            steps = None if steps is None else steps - 1

    for round_ in range(2):
        engine.add_request(f"bg{round_}", background, PoolingParams(), priority=10)
        drain(steps=3)
        engine.add_request(f"fg{round_}", foreground, PoolingParams())
        drain()
        for name, ids in ((f"bg{round_}", background), (f"fg{round_}", foreground)):
            expected = hf_embedding(hf_llama, ids, kind, normalize=False)
            torch.testing.assert_close(vectors[name], expected, atol=ATOL, rtol=0)
    stats = engine.stats()
    assert stats.num_preemptions > 0
    if kind is PoolingType.LAST:
        assert stats.prefix_cache_hits > 0
    else:
        assert stats.prefix_cache_hits == 0


def test_pooling_type_and_normalisation_come_from_a_sentence_transformers_folder(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = make_random_model("qwen2")  # attention biases: a second family
    st = tmp_path / "st-model"
    st.mkdir()
    for file in folder.iterdir():
        (st / file.name).symlink_to(file)
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    (st / "modules.json").write_text(
        json.dumps(
            [
                {"idx": i, "path": path, "type": f"sentence_transformers.models.{t}"}
                for i, (path, t) in enumerate(modules)
            ]
        )
    )
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    assert PoolerConfig.resolve(st, None) == PoolerConfig(PoolingType.MEAN, normalize=True)
    # The flag overrides the folder key by key.
    assert PoolerConfig.resolve(st, '{"normalize": false}') == PoolerConfig(
        PoolingType.MEAN, normalize=False
    )
    hf = transformers.AutoModel.from_pretrained(st, dtype=torch.float32).eval()
    llm = LLM(str(st), runner="pooling")
    ids = llm.tokenizer.encode(PROMPTS[3])
    (ours,) = embed_all(llm, [ids])
    torch.testing.assert_close(ours, hf_embedding(hf, ids, PoolingType.MEAN), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_checkpoint_without_lm_head_is_served_as_embeddings(
    family: str, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A LlamaModel or Qwen3Model folder (how e5-mistral and Qwen3-Embedding ship)
    picks the pooling runner."""
    source = make_random_model(family)
    hf = transformers.AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    folder = tmp_path / f"{family}-model"
    hf.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            (folder / name).write_bytes((source / name).read_bytes())
    architecture = {"llama": "LlamaModel", "qwen3": "Qwen3Model"}[family]
    assert json.loads((folder / "config.json").read_text())["architectures"] == [architecture]
    llm = LLM(str(folder))
    assert llm.engine.runner_kind == "pooling"
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    for ours, prompt in zip(embed_all(llm, ids), ids, strict=True):
        torch.testing.assert_close(ours, hf_embedding(hf, prompt), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="no LM head"):
        LLM(str(folder), runner="generate")


def test_each_runner_refuses_the_other_kind_of_request(llama_dir: Path) -> None:
    embedder = LLM(str(llama_dir), runner="pooling")
    with pytest.raises(ValueError, match="embedding model"):
        embedder.generate([[1, 2, 3]], greedy(2))
    generator = LLM(str(llama_dir))
    with pytest.raises(ValueError, match="--runner pooling"):
        generator.embed([[1, 2, 3]])
    assert generator.engine.runner_kind == "generate"


def test_a_prompt_may_fill_the_whole_context(llama_dir: Path, hf_llama) -> None:
    """Nothing is generated, so a prompt of exactly max_model_len tokens fits."""
    llm = LLM(str(llama_dir), runner="pooling", max_model_len=32)
    ids = (llm.tokenizer.encode(PROMPTS[3]) * 2)[:32]
    (ours,) = embed_all(llm, [ids])
    torch.testing.assert_close(ours, hf_embedding(hf_llama, ids), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="exceed"):
        llm.embed([[*ids, 5]])


def test_dimensions_only_for_matryoshka_models(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = make_random_model("mistral")
    hf = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    plain = LLM(str(folder), runner="pooling")
    with pytest.raises(SamplingParamError, match="matryoshka"):
        plain.embed([[1, 2, 3]], PoolingParams(dimensions=16))
    matryoshka = tmp_path / "matryoshka"
    matryoshka.mkdir()
    for file in folder.iterdir():
        if file.name != "config.json":
            (matryoshka / file.name).symlink_to(file)
    config = json.loads((folder / "config.json").read_text())
    config["matryoshka_dimensions"] = [16, 32, 64]
    (matryoshka / "config.json").write_text(json.dumps(config))
    llm = LLM(str(matryoshka), runner="pooling")
    ids = llm.tokenizer.encode(PROMPTS[2])
    short, raw = embed_all(llm, [ids], dimensions=16)[0], embed_all(llm, [ids], normalize=False)[0]
    # Truncated first, then normalised: a unit vector of the first 16 values.
    torch.testing.assert_close(short, hf_embedding(hf, ids, dimensions=16), atol=ATOL, rtol=0)
    torch.testing.assert_close(raw, hf_embedding(hf, ids, normalize=False), atol=ATOL, rtol=0)
    with pytest.raises(SamplingParamError, match=r"only \[16, 32, 64\]"):
        llm.embed([ids], PoolingParams(dimensions=24))
    with pytest.raises(SamplingParamError, match="at least 1"):
        PoolingParams(dimensions=0)


def test_lora_adapters_embed_as_peft_computes_them(
    llama_dir: Path, hf_llama, tmp_path: Path
) -> None:
    """An adapter of an embedding model, mixed in one batch with the base model."""
    from peft import PeftModel  # here, not at collection: PEFT imports triton

    from benchmarks.random_lora import build_random_lora
    from engine.lora_config import LoRAConfig

    adapter = build_random_lora(tmp_path / "a", llama_dir, rank=8, alpha=16, seed=4)
    llm = LLM(
        str(llama_dir),
        runner="pooling",
        lora_config=LoRAConfig.from_entries([f"a={adapter}"], 16),
    )
    base = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(adapter)).eval()
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    loras = ["a" if i % 2 == 0 else None for i in range(len(prompts))]
    results = llm.embed(prompts, lora=loras)
    for ids, lora, result in zip(prompts, loras, results, strict=True):
        if lora is None:
            expected = hf_embedding(hf_llama, ids)
        else:
            with torch.no_grad():
                hidden = peft(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
            expected = F.normalize(hidden[0, -1], dim=-1)
        torch.testing.assert_close(result.embedding, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(results[0].embedding, hf_embedding(hf_llama, prompts[0]))


def test_pooler_config_default_dimensions(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = tmp_path / "matryoshka"
    folder.mkdir()
    source = make_random_model("llama")
    for file in source.iterdir():
        if file.name != "config.json":
            (folder / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "is_matryoshka": True}))
    llm = LLM(str(folder), runner="pooling", pooler_config={"dimensions": 8})
    ids = [5, 6, 7]
    (short,) = embed_all(llm, [ids])
    (full,) = embed_all(llm, [ids], dimensions=64)
    assert short.shape == (8,) and full.shape == (64,)
    with pytest.raises(ValueError, match="pooler_config: dimensions: this model does not"):
        LLM(str(source), runner="pooling", pooler_config={"dimensions": 8})


def test_pooler_config_flag_is_checked() -> None:
    assert PoolerConfig.parse('{"pooling_type": "mean"}') == {"pooling_type": PoolingType.MEAN}
    with pytest.raises(PoolerConfigError, match="not one of"):
        PoolerConfig.parse({"pooling_type": "MAX"})
    # A classifier's default activation, under vLLM's three names (softmax wins).
    assert PoolerConfig.parse({"softmax": False, "activation": True}) == {"use_activation": False}
    with pytest.raises(PoolerConfigError, match="use_activation must be true or false"):
        PoolerConfig.parse({"use_activation": "no"})
    with pytest.raises(PoolerConfigError, match="'max_embed_len' is not supported"):
        PoolerConfig.parse({"max_embed_len": 8192})
    with pytest.raises(PoolerConfigError, match="'pooling_kind' is not supported"):
        PoolerConfig.parse({"pooling_kind": "x"})
    # vLLM's switch for what always happens here is accepted.
    assert PoolerConfig.parse({"enable_chunked_processing": True}) == {}
    with pytest.raises(PoolerConfigError, match="JSON"):
        PoolerConfig.parse("{pooling")
