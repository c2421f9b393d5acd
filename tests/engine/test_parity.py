"""HF transformers is the oracle: greedy tokens and prefill logprobs must match it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from benchmarks.random_model import copy_tokenizer
from engine.llm import LLM, greedy

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "The three primary colors are",
    "Translate to French: Good morning, how are you?",
    "Question: What is 12 times 12? Answer:",
    "import numpy as np\nx = np.arange(10)\n",
    "The quick brown fox",
    "Les grandes villes de France sont",
    "日本の首都は",
    "List three fruits:\n1.",
    "In 1969, astronauts",
    "Explain photosynthesis in one sentence.",
    "<html><body><h1>",
    "A: Hello!\nB:",
    "Water boils at a temperature of",
]


def hf_greedy(model: transformers.PreTrainedModel, prompt_ids: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt_ids) :].tolist()


def hf_greedy_choices(
    model: transformers.PreTrainedModel, prompt_ids: list[int], ours: list[int]
) -> list[int]:
    """HF's greedy pick after the prompt and after each prefix of `ours`, EOS barred.

    Greedy decoding means each token is the argmax given the ones before it, so
    this equals `hf_greedy(model, prompt_ids, len(ours))` exactly when `ours` is
    right, and its first difference is the first wrong token; it costs one
    forward pass where `generate` takes one per token (34 s for the 16 prompts).
    """
    eos = model.generation_config.eos_token_id  # min_new_tokens bars it, as min_tokens does
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + ours])).logits[0].float()
        picks = logits[len(prompt_ids) - 1 : -1]
        picks[:, torch.tensor(eos if isinstance(eos, list) else [eos])] = float("-inf")
        return picks.argmax(-1).tolist()


def config_variant(
    source: Path, folder: Path, edit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """`source`'s model in `folder` with its config.json edited in place by `edit`
    (the weights and tokenizer linked); returns the edited config."""
    folder.mkdir()
    for file in source.iterdir():
        if file.name != "config.json":
            (folder / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return config


def assert_prompt_logprobs_match(
    llm: LLM, hf: transformers.PreTrainedModel, prompt: list[int]
) -> None:
    """Every prompt token's logprob as HF's forward pass over the whole prompt gives it."""
    lp = llm.generate([prompt], greedy(1, prompt_logprobs=5))[0].prompt_logprobs
    with torch.inference_mode():
        expected = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), dim=-1)
    assert lp is not None
    got = torch.tensor([x.logprob for x in lp[1:]])
    want = expected[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def hf_bundled(bundled_model_dir: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(
        bundled_model_dir, dtype=torch.float32
    ).eval()


@pytest.mark.slow
def test_bundled_model_greedy_matches_hf(bundled_llm: LLM, hf_bundled) -> None:
    assert len(PROMPTS) >= 16
    prompts = [bundled_llm.tokenizer.encode(p) for p in PROMPTS]
    ours = bundled_llm.generate(prompts, greedy(32, min_tokens=32))
    for prompt, result in zip(prompts, ours, strict=True):
        assert len(result.token_ids) == 32
        assert result.token_ids == hf_greedy_choices(hf_bundled, prompt, result.token_ids), prompt


@pytest.mark.slow
def test_bundled_model_chat_prompt_matches_hf(bundled_llm: LLM, hf_bundled) -> None:
    prompt = bundled_llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a planet in our solar system."}]
    )
    result = bundled_llm.generate([prompt], greedy(32, min_tokens=32))[0]
    assert result.token_ids == hf_greedy(hf_bundled, prompt, 32)


def test_bundled_prefill_logprobs_match_hf(bundled_llm: LLM, hf_bundled) -> None:
    prompt = bundled_llm.tokenizer.encode(PROMPTS[4] + " " + PROMPTS[8])
    result = bundled_llm.generate([prompt], greedy(1, prompt_logprobs=20))[0]
    with torch.inference_mode():
        logits = hf_bundled(torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    assert result.prompt_logprobs is not None
    assert result.prompt_logprobs[0] is None
    assert len(result.prompt_logprobs) == len(prompt)
    for pos, lp in enumerate(result.prompt_logprobs[1:], start=1):
        assert lp is not None
        assert lp.token_id == prompt[pos]
        assert lp.logprob == pytest.approx(expected[pos - 1, prompt[pos]].item(), abs=2e-4)
        top_ids = [t for t, _ in lp.top]
        top_vals = torch.tensor([v for _, v in lp.top])
        torch.testing.assert_close(top_vals, expected[pos - 1, top_ids], atol=2e-4, rtol=0)


@pytest.mark.parametrize(
    "family",
    [
        "llama",
        "qwen2",
        "mistral",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "smollm3",
        "granite",
        "phi3",
        "qwen2_moe",
        "qwen3_moe",
        "mixtral",
        "granitemoe",
        "olmo2",
        "olmo3",
        "exaone4",
        "glm4",
        "ernie4_5",
        "cohere",
        "cohere_qk_norm",
        "cohere2",
        "seed_oss",
        "ministral",
        "starcoder2",
        "gpt_oss",
    ],
)
def test_random_models_match_hf(family: str, make_random_model: Callable[[str], Path]) -> None:
    folder = make_random_model(family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (5, 17, 40, 90)]
    results = llm.generate(prompts, greedy(24, min_tokens=24))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt, 24)
    # Prefill logprobs over a prompt longer than the llama3 rope's original context.
    prompt = prompts[-1]
    assert_prompt_logprobs_match(llm, hf, prompt)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        # DeepSeek-style magnitudes and an explicit ramp.
        {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 32,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
            "beta_fast": 16,
            "beta_slow": 2,
        },
    ],
)
def test_yarn_scaled_rope_matches_hf(
    rope: dict[str, object], make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """YaRN (how Qwen3 and Qwen2.5 reach 128K) past its original context: greedy tokens
    and prompt logprobs as HF computes them, and the context it stretches to."""
    folder = tmp_path / "yarn"

    def with_yarn(config: dict[str, Any]) -> None:
        theta = (config.get("rope_parameters") or {}).get("rope_theta", 1000000.0)
        config["rope_parameters"] = {**rope, "rope_theta": theta}
        config.pop("rope_scaling", None)

    config = config_variant(make_random_model("qwen3"), folder, with_yarn)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_type"] == "yarn"
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    stretched = int(32 * float(rope["factor"]))  # type: ignore[arg-type]
    assert llm.engine.max_model_len == max(stretched, config["max_position_embeddings"])
    torch.manual_seed(1)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (7, 90)]
    results = llm.generate(prompts, greedy(16, min_tokens=16))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt, 16)
    prompt = prompts[-1]
    assert_prompt_logprobs_match(llm, hf, prompt)


def test_hf_overrides_serve_the_model_as_hf_reads_the_edited_config(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """--hf-overrides '{"rope_scaling": ...}' (Qwen's way to a longer context) on the
    unchanged files generates what HF generates from a config.json edited the same way."""
    source = make_random_model("qwen3")
    yarn = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 32}

    def with_yarn(config: dict[str, Any]) -> None:
        theta = (config.get("rope_parameters") or {}).get("rope_theta", 1000000.0)
        config["rope_parameters"] = {**yarn, "rope_theta": theta}
        config.pop("rope_scaling", None)

    config_variant(source, tmp_path / "edited", with_yarn)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "edited", dtype=torch.float32
    ).eval()
    llm = LLM(str(source), kv_cache_memory=64 << 20, hf_overrides={"rope_scaling": yarn})
    assert llm.engine.max_model_len == 32 * 32  # the stretched context, past the file's 512
    torch.manual_seed(2)
    prompt = torch.randint(3, 49152, (90,)).tolist()
    (result,) = llm.generate([prompt], greedy(16, min_tokens=16))
    assert result.token_ids == hf_greedy(hf, prompt, 16)


@pytest.mark.parametrize(
    ("family", "window_config"),
    [
        ("mistral", {"sliding_window": 16}),  # every layer slides (Mistral v0.1)
        # Qwen: only the layers from max_window_layers on slide.
        ("qwen3", {"sliding_window": 12, "use_sliding_window": True, "max_window_layers": 1}),
    ],
)
def test_sliding_window_layers_match_hf(
    family: str,
    window_config: dict[str, object],
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Prompts and generations well past the window: each sliding layer sees only its
    last `sliding_window` positions, as HF's masks allow, through chunked prefill
    (chunks of 8 after a prefix) and decodes."""
    folder = tmp_path / "windowed"

    def with_window(config: dict[str, Any]) -> None:
        config.update(window_config)
        config.pop("layer_types", None)  # derived again from the window settings

    config = config_variant(make_random_model(family), folder, with_window)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(str(folder), kv_cache_memory=64 << 20, max_num_batched_tokens=8)
    windows = {layer.self_attn.window for layer in llm.engine.runner.model.layers}
    assert windows == ({16} if family == "mistral" else {None, 12})
    assert llm.engine.max_model_len == config["max_position_embeddings"]
    torch.manual_seed(2)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (5, 30, 61)]
    results = llm.generate(prompts, greedy(20, min_tokens=20))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt, 20)
    prompt = prompts[-1]
    assert_prompt_logprobs_match(llm, hf, prompt)


@pytest.mark.parametrize(
    ("prompt_len", "chunk"),
    [
        (61, 8),
        # The last prompt chunk starts at 63, past the start of the last full block (60)
        # the choices fork from: the parent has given back a block the second choice's
        # window still needs, so that choice computes its prompt itself.
        (64, 7),
    ],
)
def test_a_model_sliding_every_layer_holds_only_its_window(
    prompt_len: int, chunk: int, make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Every layer slides (Mistral v0.1): blocks behind the window are given back as the
    sequence goes, so a ~60-token prompt and 40 more tokens (~26 blocks of 4) never
    hold more than the window's and a chunk's worth, and the tokens are still HF's,
    for the n=2 choices forked off the prompt, and again through the prefix cache."""
    folder = tmp_path / "mistral-window"
    config_variant(make_random_model("mistral"), folder, lambda c: c.update(sliding_window=16))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(str(folder), kv_cache_memory=64 << 20, block_size=4, max_num_batched_tokens=chunk)
    engine, bm = llm.engine, llm.engine.block_manager
    assert bm.window == 16
    torch.manual_seed(4)
    prompt = torch.randint(3, 49152, (prompt_len,)).tolist()
    expected = hf_greedy(hf, prompt, 40)
    for attempt in range(2):
        engine.add_request(f"r{attempt}", prompt, greedy(40, min_tokens=40, n=2))
        tokens: dict[int, list[int]] = {0: [], 1: []}
        peak = 0
        while engine.has_unfinished():
            for out in engine.step():
                for choice in out.outputs:
                    tokens[choice.index] += choice.token_ids
            peak = max(peak, bm.num_blocks - bm.num_free_blocks)
        assert tokens == {0: expected, 1: expected}
        # Per choice: the window (16 tokens), a chunk of 8 and a partial block on each
        # side; the forked choices share the prompt's last blocks.
        assert peak <= 2 * 8 < 2 * bm.blocks_for(prompt_len + 40)
    assert bm.num_free_blocks == bm.num_blocks


def _vision_language_config(family: str, text_config: dict[str, Any], **outer: Any) -> Any:
    """A tiny vision tower beside `text_config`, in the family's vision-language config."""
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    if family == "gemma3":
        return transformers.Gemma3Config(
            text_config=text_config,
            vision_config=transformers.SiglipVisionConfig(**vision).to_dict(),
            mm_tokens_per_image=4,
            **outer,
        )
    return transformers.Mistral3Config(
        text_config=text_config,
        vision_config=transformers.PixtralVisionConfig(**vision).to_dict(),
        **outer,
    )


@pytest.mark.parametrize(
    ("family", "architecture", "outer"),
    [
        ("gemma3", "Gemma3ForConditionalGeneration", {}),
        # Tied by the outer config's default, whatever text_config says (as HF ties)...
        ("mistral", "Mistral3ForConditionalGeneration", {}),
        # ... or with an LM head of its own.
        ("mistral", "Mistral3ForConditionalGeneration", {"tie_word_embeddings": False}),
    ],
)
def test_a_vision_language_checkpoint_serves_its_text_model(
    family: str,
    architecture: str,
    outer: dict[str, Any],
    make_random_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Gemma 3 4B and up, and Mistral Small 3.1/3.2, ship as vision-language models:
    the engine loads the text model out of them (skipping the vision tower) and
    generates what HF's whole model generates from text alone."""
    text_folder = make_random_model(family)
    text_config = json.loads((text_folder / "config.json").read_text())
    text_model = transformers.AutoModelForCausalLM.from_pretrained(text_folder)
    torch.manual_seed(6)
    hf_class = getattr(transformers, architecture)
    hf = hf_class(_vision_language_config(family, text_config, **outer)).eval()
    hf.model.language_model.load_state_dict(text_model.model.state_dict())
    hf.lm_head.load_state_dict(text_model.lm_head.state_dict())
    folder = tmp_path / f"{family}-vlm"
    hf.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((text_folder / name).read_bytes())
    saved = json.loads((folder / "config.json").read_text())
    assert saved["architectures"] == [architecture]
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    tied = hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    assert (
        llm.engine.model_config.tie_word_embeddings
        == tied
        == outer.get("tie_word_embeddings", True)
    )
    torch.manual_seed(3)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (6, 40)]
    results = llm.generate(prompts, greedy(16, min_tokens=16))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt, 16)


def test_longrope_matches_hf_within_and_past_the_original_context(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Phi-3.5's and Phi-4-mini's LongRoPE: served within the original context (64
    here) the short factors rotate, as HF does there; served past it the long ones
    rotate every position, as HF does for a sequence past it."""
    folder = tmp_path / "longrope"
    gen = torch.Generator().manual_seed(8)
    pairs = 4  # head_dim 16, half of it rotated

    def with_longrope(config: dict[str, Any]) -> None:
        config.pop("rope_scaling", None)
        config["rope_parameters"] = {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "short_factor": (1 + 0.5 * torch.rand(pairs, generator=gen)).tolist(),
            "long_factor": (2 + 6 * torch.rand(pairs, generator=gen)).tolist(),
        }
        config.update(original_max_position_embeddings=64, max_position_embeddings=256)
        config.pop("sliding_window", None)

    config_variant(make_random_model("phi3"), folder, with_longrope)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.manual_seed(4)
    short_prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (5, 30)]
    within = LLM(str(folder), kv_cache_memory=32 << 20, max_model_len=64)
    for prompt, result in zip(
        short_prompts, within.generate(short_prompts, greedy(16, min_tokens=16)), strict=True
    ):
        assert result.token_ids == hf_greedy(hf, prompt, 16)
    long_prompt = torch.randint(3, 49152, (90,)).tolist()
    past = LLM(str(folder), kv_cache_memory=32 << 20, max_model_len=256)
    (result,) = past.generate([long_prompt], greedy(8, min_tokens=8))
    assert result.token_ids == hf_greedy(hf, long_prompt, 8)
    assert_prompt_logprobs_match(past, hf, long_prompt)


def test_llama_with_attention_biases_matches_hf(bundled_model_dir: Path, tmp_path: Path) -> None:
    """`attention_bias` puts a bias on all four of Llama's attention projections, the
    output's included, as transformers builds them."""
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(8)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
    folder = tmp_path / "llama-biased"
    model.save_pretrained(folder)
    copy_tokenizer(bundled_model_dir, folder)
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    assert llm.engine.runner.model.layers[0].self_attn.o_proj.bias is not None
    prompt = torch.randint(3, 49152, (30,)).tolist()
    assert llm.generate([prompt], greedy(12, min_tokens=12))[0].token_ids == hf_greedy(
        model.eval(), prompt, 12
    )
    assert_prompt_logprobs_match(llm, model, prompt)
    # A port that sets attention_bias but ships no o_proj.bias (some "llamafied" Qwen
    # checkpoints) loads with zeros there, as transformers initialises them.
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    for name in [n for n in weights if n.endswith("o_proj.bias")]:
        del weights[name]
        model.get_parameter(name).data.zero_()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    assert_prompt_logprobs_match(llm, model, prompt)


def test_ministral_saved_as_mistral_keeps_its_full_layers(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Ministral-8B ships `MistralForCausalLM` with `layer_types`, which transformers reads
    as Ministral: its full-attention layers must not slide (nor lose blocks behind it)."""
    folder = tmp_path / "ministral-as-mistral"

    def as_mistral(config: dict[str, Any]) -> None:
        config.update(architectures=["MistralForCausalLM"], model_type="mistral")

    config_variant(make_random_model("ministral"), folder, as_mistral)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(hf).__name__ == "MinistralForCausalLM"
    llm = LLM(str(folder), kv_cache_memory=64 << 20)
    assert llm.engine.model_config.layer_windows == (8, None)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 49152, (n,)).tolist() for n in (17, 90)]
    results = llm.generate(prompts, greedy(24, min_tokens=24))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt, 24)


@pytest.mark.parametrize("family", ["ernie4_5", "cohere2"])
def test_bf16_rotations_round_where_transformers_rounds(
    family: str, make_random_model: Callable[[str], Path]
) -> None:
    """ERNIE 4.5 (fp32 cos/sin and arithmetic) and Cohere (fp32 arithmetic) rotate in
    fp32 inside a bf16 model: rotating in bf16 moved prompt logprobs by up to 0.2."""
    folder = make_random_model(family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    llm = LLM(str(folder), dtype="bfloat16", kv_cache_memory=64 << 20)
    torch.manual_seed(1)
    prompt = torch.randint(3, 49152, (60,)).tolist()
    lp = llm.generate([prompt], greedy(1, prompt_logprobs=1))[0].prompt_logprobs
    with torch.inference_mode():
        logits = hf(torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    assert lp is not None
    got = torch.tensor([x.logprob for x in lp[1:]])
    want = expected[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
