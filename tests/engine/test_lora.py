"""LoRA serving against PEFT as the oracle: greedy tokens equal PEFT's on HF transformers,
for each adapter alone and for any mix of adapters and the base model in one batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from benchmarks.random_lora import PEFT_DEFAULT_TARGETS, build_random_lora
from engine.llm import LLM, greedy
from engine.lora_config import LoRAConfig
from engine.sampling_params import SamplingParams

from .test_parity import hf_greedy
from .test_speculative_decoding import OracleProposer

PROMPTS = [[5, 77, 300, 12], [9, 8, 7, 6, 5, 4, 3], [1200, 44, 5, 900, 31, 7, 7, 7, 2000, 13]]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def base_dir(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("llama")


@pytest.fixture(scope="module")
def adapters(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two adapters unlike each other: every projection at rank 8, and PEFT's default q/v
    targets with rsLoRA and per-module rank and alpha (so ranks are padded to 8)."""
    root = tmp_path_factory.mktemp("loras")
    return {
        "all-proj": build_random_lora(root / "all", base_dir, rank=8, alpha=16, seed=1),
        "qv-rslora": build_random_lora(
            root / "qv",
            base_dir,
            rank=4,
            alpha=8,
            targets=PEFT_DEFAULT_TARGETS,
            seed=2,
            use_rslora=True,
            rank_pattern={"q_proj": 2},
            alpha_pattern={"v_proj": 3.0},
        ),
    }


def lora_config(adapters: dict[str, Path]) -> LoRAConfig:
    return LoRAConfig.from_entries([f"{name}={path}" for name, path in adapters.items()], 16)


@pytest.fixture(scope="module")
def llm(base_dir: Path, adapters: dict[str, Path]) -> LLM:
    return LLM(str(base_dir), lora_config=lora_config(adapters))


@pytest.fixture(scope="module")
def oracle(base_dir: Path, adapters: dict[str, Path]) -> dict[str | None, list[list[int]]]:
    """PEFT's greedy tokens for every prompt, per adapter (None: the base model)."""
    # Imported here, not at collection: PEFT imports triton, which must first see
    # TRITON_INTERPRET=1 from tests/kernels/conftest.py (collected after this module).
    from peft import PeftModel

    def generate(adapter: Path | None) -> list[list[int]]:
        model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        model.eval()
        outputs = []
        for prompt in PROMPTS:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
            outputs.append(out[0, len(prompt) :].tolist())
        return outputs

    return {None: generate(None)} | {name: generate(path) for name, path in adapters.items()}


def run(llm: LLM, lora: str | list[str | None] | None, prompts: list[list[int]] = PROMPTS):
    results = llm.generate(prompts, greedy(NEW_TOKENS, min_tokens=NEW_TOKENS), lora=lora)
    return [r.token_ids for r in results]


def test_each_adapter_matches_peft(llm: LLM, oracle) -> None:
    for name in ("all-proj", "qv-rslora", None):
        assert run(llm, name) == oracle[name], name
    # The adapters matter: each answers differently from the base model and each other.
    assert oracle["all-proj"] != oracle[None] and oracle["qv-rslora"] != oracle[None]
    assert oracle["all-proj"] != oracle["qv-rslora"]


def test_adapters_and_the_base_model_batch_together(llm: LLM, oracle) -> None:
    names: list[str | None] = ["all-proj", None, "qv-rslora"]
    loras = [names[(i + j) % 3] for i in range(3) for j in range(len(PROMPTS))]
    prompts = [PROMPTS[j] for _ in range(3) for j in range(len(PROMPTS))]
    got = run(llm, loras, prompts)
    want = [oracle[lora][PROMPTS.index(p)] for lora, p in zip(loras, prompts, strict=True)]
    assert got == want


def test_the_prefix_cache_never_crosses_adapters(llm: LLM, oracle) -> None:
    prompt = [[int(t) for t in torch.arange(100, 140)]]  # 40 tokens: 2 full blocks of 16
    before = llm.engine.stats().prefix_cache_hits
    first = run(llm, "all-proj", prompt)
    assert llm.engine.stats().prefix_cache_hits == before
    # The same tokens under the base model and the other adapter: misses, each computed anew.
    base, other = run(llm, None, prompt), run(llm, "qv-rslora", prompt)
    assert llm.engine.stats().prefix_cache_hits == before
    assert len({tuple(first[0]), tuple(base[0]), tuple(other[0])}) == 3
    # The same adapter again: its own blocks are found.
    assert run(llm, "all-proj", prompt) == first
    assert llm.engine.stats().prefix_cache_hits > before


def test_chunked_prefill_preemption_and_forks_keep_adapter_output(
    base_dir: Path, adapters: dict[str, Path], oracle
) -> None:
    squeezed = LLM(
        str(base_dir),
        lora_config=lora_config(adapters),
        max_model_len=32,
        num_kv_blocks=12,  # 48 tokens: the 9 answers need about 250
        block_size=4,
        max_num_batched_tokens=8,
    )
    loras: list[str | None] = [n for n in ("qv-rslora", "all-proj", None) for _ in PROMPTS]
    prompts = PROMPTS * 3
    want = [oracle[lora][PROMPTS.index(p)] for lora, p in zip(loras, prompts, strict=True)]
    assert run(squeezed, loras, prompts) == want
    assert squeezed.engine.stats().num_preemptions > 0
    # n=2 forks the prompt's blocks: both choices are the adapter's greedy answer.
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, n=2)
    result = squeezed.generate([PROMPTS[1]], params, lora="all-proj")[0]
    assert [c.token_ids for c in result.choices] == [oracle["all-proj"][1]] * 2


def test_an_unknown_adapter_is_refused(llm: LLM) -> None:
    with pytest.raises(ValueError, match=r"unknown LoRA adapter 'nope'.*all-proj, qv-rslora"):
        llm.generate([PROMPTS[0]], greedy(2), lora="nope")
    assert not llm.engine.has_unfinished()


def test_an_adapter_may_not_take_the_base_models_name(base_dir: Path, adapters) -> None:
    config = LoRAConfig.from_entries([f"base={adapters['all-proj']}"], 16)
    with pytest.raises(ValueError, match="is the base model's name"):
        LLM(str(base_dir), served_model_name="base", lora_config=config)


def assert_same_logprobs(got: list | None, want: list | None) -> None:
    assert got is not None and want is not None and len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if a is None or b is None:
            assert a is b
            continue
        assert (a.token_id, a.rank) == (b.token_id, b.rank)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [lp for _, lp in a.top] == pytest.approx([lp for _, lp in b.top], abs=1e-4)


class RefusingGraphs:
    """Stands in for recorded decode graphs: they hold no adapters, so replaying one for a
    step with adapter rows would silently drop the adapter."""

    max_batch = 64

    def run(self, *args: object) -> torch.Tensor:
        raise AssertionError("a decode graph was replayed for a step with LoRA rows")


def test_steps_with_adapter_rows_never_replay_decode_graphs(llm: LLM, oracle) -> None:
    runner = llm.engine.runner
    runner.decode_graphs = RefusingGraphs()
    try:
        assert run(llm, "qv-rslora") == oracle["qv-rslora"]
        loras: list[str | None] = ["all-proj", None, "qv-rslora"]
        assert run(llm, loras) == [oracle[lora][i] for i, lora in enumerate(loras)]
    finally:
        runner.decode_graphs = None


def test_logprobs_and_drafts_see_each_rows_own_adapter(
    base_dir: Path, adapters: dict[str, Path], oracle
) -> None:
    """Rows reordered by adapter keep their prompt logprobs, sampled logprobs and drafts:
    a mixed batch gives each request what it gets alone."""
    llm = LLM(
        str(base_dir),
        lora_config=lora_config(adapters),
        speculative_config={"method": "ngram", "num_speculative_tokens": 3},
        max_num_batched_tokens=12,
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, logprobs=2, prompt_logprobs=2
    )
    loras: list[str | None] = [None, "qv-rslora", "all-proj"]
    # Drafts of each request's true continuation (every 5th corrupted): accepted only
    # where the row was verified under its own adapter.
    llm.engine.proposer = OracleProposer(
        [[*p, *oracle[lora][i]] for i, (p, lora) in enumerate(zip(PROMPTS, loras, strict=True))]
    )
    alone = [
        llm.generate([p], params, lora=lora)[0] for p, lora in zip(PROMPTS, loras, strict=True)
    ]
    accepted = llm.engine.stats().spec_accepted_tokens
    together = llm.generate(PROMPTS, params, lora=loras)
    assert llm.engine.stats().spec_accepted_tokens > accepted > 0
    for i, (one, mixed) in enumerate(zip(alone, together, strict=True)):
        assert mixed.token_ids == one.token_ids == oracle[loras[i]][i]
        # Equal up to float noise: another batch is another matmul shape.
        assert_same_logprobs(mixed.prompt_logprobs, one.prompt_logprobs)
        assert_same_logprobs(mixed.choices[0].logprobs, one.choices[0].logprobs)
    # The adapters change the prompt's scores too (its KV is computed under them).
    base = llm.generate([PROMPTS[1]], params)[0].prompt_logprobs
    assert base is not None and together[1].prompt_logprobs is not None
    assert abs(together[1].prompt_logprobs[1].logprob - base[1].logprob) > 1e-3


def test_adapters_load_and_unload_while_serving(
    base_dir: Path, adapters: dict[str, Path], oracle
) -> None:
    llm = LLM(str(base_dir), block_size=4, lora_config=LoRAConfig((), 16, runtime_updates=True))
    engine = llm.engine
    assert engine.lora_names == ()
    engine.load_lora("late", str(adapters["qv-rslora"]))
    assert engine.lora_paths == {"late": str(adapters["qv-rslora"])}
    assert run(llm, "late") == oracle["qv-rslora"]
    with pytest.raises(ValueError, match="already loaded"):
        engine.load_lora("late", str(adapters["all-proj"]))

    # Unloaded mid-request: that request finishes on the adapter, new ones are refused.
    params = greedy(NEW_TOKENS, min_tokens=NEW_TOKENS)
    engine.add_request("running", PROMPTS[1], params, lora="late")
    engine.add_request("plain", PROMPTS[0], greedy(1))
    stats = engine.stats()
    assert (stats.lora_waiting, stats.lora_running) == (("late",), ())
    tokens = [
        t
        for out in engine.step()
        if out.request_id == "running"
        for c in out.outputs
        for t in c.token_ids
    ]
    assert engine.stats().lora_running == ("late",)
    engine.unload_lora("late")
    assert engine.lora_names == () and engine.loras.retiring
    with pytest.raises(ValueError, match="unknown LoRA adapter 'late'"):
        engine.add_request("refused", PROMPTS[1], greedy(2), lora="late")
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for c in out.outputs for t in c.token_ids]
    assert tokens == oracle["qv-rslora"][1]
    engine.step()  # idle: the retired slot is freed for the next adapter
    assert not engine.loras.retiring

    # The same name over other weights: the old load's cached prefix blocks are not reused.
    hits = engine.stats().prefix_cache_hits
    engine.load_lora("late", str(adapters["all-proj"]))
    assert run(llm, "late") == oracle["all-proj"]
    assert engine.stats().prefix_cache_hits == hits
    engine.load_lora("late", str(adapters["qv-rslora"]), replace=True)
    assert run(llm, "late") == oracle["qv-rslora"]
    assert engine.loras._num_slots == 2  # freed slots are reused, not grown


def test_runtime_updates_need_a_lora_engine(base_dir: Path, adapters) -> None:
    plain = LLM(str(base_dir))
    with pytest.raises(ValueError, match="started without LoRA"):
        plain.engine.load_lora("late", str(adapters["all-proj"]))
    with pytest.raises(ValueError, match="unknown LoRA adapter 'late'"):
        plain.generate([PROMPTS[0]], greedy(2), lora="late")


def test_a_load_that_fails_midway_changes_nothing(
    base_dir: Path, adapters: dict[str, Path], oracle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory on the third layer, say: the adapter served before keeps serving,
    and later loads still work."""
    import engine.lora_manager as lora_manager

    llm = LLM(
        str(base_dir),
        lora_config=LoRAConfig((), 16, runtime_updates=True, max_loaded=2),
    )
    engine = llm.engine
    engine.load_lora("a", str(adapters["all-proj"]))
    real, calls = lora_manager.slot_weights, []

    def failing(*args: object, **kwargs: object):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("simulated")
        return real(*args, **kwargs)

    monkeypatch.setattr(lora_manager, "slot_weights", failing)
    with pytest.raises(torch.OutOfMemoryError):
        engine.load_lora("a", str(adapters["qv-rslora"]), replace=True)
    monkeypatch.setattr(lora_manager, "slot_weights", real)
    assert engine.lora_paths == {"a": str(adapters["all-proj"])}
    assert run(llm, "a") == oracle["all-proj"]
    engine.load_lora("b", str(adapters["qv-rslora"]))
    assert run(llm, "b") == oracle["qv-rslora"]
    # --max-cpu-loras 2: a third is refused until one is unloaded.
    with pytest.raises(ValueError, match="max-cpu-loras"):
        engine.load_lora("c", str(adapters["qv-rslora"]))
    engine.unload_lora("b")
    engine.load_lora("c", str(adapters["qv-rslora"]))
    assert run(llm, "c") == oracle["qv-rslora"]


def test_the_gpu_reserve_per_adapter_is_what_one_takes(llm: LLM) -> None:
    """adapter_bytes (room kept out of the KV cache for runtime loads) equals what a rank-8
    adapter on every projection really holds in its slot."""
    slot = llm.engine.loras.slot("all-proj")
    held = sum(
        t.numel() * t.element_size()
        for _, linear, _ in llm.engine.runner.model.lora_projections()
        for t in (linear.lora.a[slot], linear.lora.b[slot])
    )
    assert held == llm.engine.loras.adapter_bytes(8, 4)


def test_a_phi3_adapter_on_its_fused_projections_matches_peft(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Phi-3's checkpoints fuse q/k/v and gate/up, so its adapters train qkv_proj and
    gate_up_proj whole (PEFT's default target for it is qkv_proj)."""
    base = make_random_model("phi3")
    adapter = build_random_lora(
        tmp_path / "phi3", base, targets=("qkv_proj", "gate_up_proj", "o_proj"), seed=3
    )
    llm = assert_matches_peft(base, "phi3", adapter)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    base_tokens = llm.generate([PROMPTS[0]], params)[0].token_ids
    assert base_tokens != llm.generate([PROMPTS[0]], params, lora="phi3")[0].token_ids


def test_a_glm4_adapter_on_its_reordered_query_and_key_rows_matches_peft(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """GLM-4's query/key rows are reordered as they load (its interleaved rotation run by
    the half-split kernels): an adapter's B rows for them must follow."""
    base = make_random_model("glm4")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
    adapter = build_random_lora(tmp_path / "glm4", base, targets=targets, seed=4)
    assert_matches_peft(base, "glm4", adapter)


def assert_matches_peft(base: Path, name: str, adapter: Path) -> LLM:
    """Greedy tokens with `adapter` served as `name` equal PEFT's on HF for every prompt;
    returns the engine serving it."""
    from peft import PeftModel  # here, not at collection: PEFT imports triton

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    llm = LLM(str(base), lora_config=lora_config({name: adapter}))
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    for prompt in PROMPTS:
        (ours,) = llm.generate([prompt], params, lora=name)
        assert ours.token_ids == hf_greedy(model, prompt, NEW_TOKENS)
    return llm
