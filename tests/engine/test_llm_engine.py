"""Batching, chunked prefill, prefix caching, preemption and n>1 must not change greedy output."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.llm import LLM, greedy
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSequence

from .test_parity import PROMPTS

OUT = 24


def _prompts(llm: LLM, count: int) -> list[list[int]]:
    base = [llm.tokenizer.encode(p) for p in PROMPTS]
    return [base[i % len(base)] + base[(i * 7 + 3) % len(base)] for i in range(count)]


@pytest.fixture(scope="module")
def reference(bundled_llm: LLM) -> dict[tuple[int, ...], list[int]]:
    """Each prompt generated alone: the answer every batched variant must reproduce
    (16 of them: each alone run costs a second or two on this CPU)."""
    return {
        tuple(p): bundled_llm.generate([p], greedy(OUT, min_tokens=OUT))[0].token_ids
        for p in _prompts(bundled_llm, 16)
    }


def _assert_same(llm: LLM, reference: dict, prompts: list[list[int]]) -> None:
    results = llm.generate(prompts, greedy(OUT, min_tokens=OUT))
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == reference[tuple(prompt)]


def test_batch_of_32_matches_alone(bundled_llm: LLM, reference: dict) -> None:
    # Every prompt twice: 32 sequences, the twins sharing prefix-cached blocks mid-batch.
    _assert_same(bundled_llm, reference, _prompts(bundled_llm, 16) * 2)


def test_chunked_prefill_on_a_tiny_budget(bundled_model_dir: Path, reference: dict) -> None:
    llm = LLM(
        str(bundled_model_dir),
        max_num_batched_tokens=7,
        kv_cache_memory=256 << 20,
        max_model_len=1024,
    )
    sizes: list[int] = []
    execute = llm.engine.runner.execute

    def spy(scheduled: list[ScheduledSequence]):
        sizes.append(sum(s.num_tokens for s in scheduled))
        return execute(scheduled)

    llm.engine.runner.execute = spy  # type: ignore[method-assign]
    _assert_same(llm, reference, _prompts(llm, 6))
    assert max(sizes) <= 7
    assert any(s > 1 for s in sizes)


def test_the_long_prefill_threshold_keeps_outputs(bundled_model_dir: Path, reference: dict) -> None:
    """--long-prefill-token-threshold: every prompt prefills at most 5 tokens a step,
    several at once, and greedy output is unchanged."""
    llm = LLM(
        str(bundled_model_dir),
        long_prefill_token_threshold=5,
        kv_cache_memory=256 << 20,
        max_model_len=1024,
    )
    chunks: list[int] = []
    execute = llm.engine.runner.execute

    def spy(scheduled: list[ScheduledSequence]):
        chunks.extend(s.num_tokens for s in scheduled if s.seq.num_uncomputed_tokens > 1)
        return execute(scheduled)

    llm.engine.runner.execute = spy  # type: ignore[method-assign]
    _assert_same(llm, reference, _prompts(llm, 6))
    assert chunks and max(chunks) <= 5


def test_prefix_cache_hit_computes_only_the_tail(bundled_model_dir: Path, reference: dict) -> None:
    llm = LLM(str(bundled_model_dir), kv_cache_memory=256 << 20, max_model_len=1024)
    shared = [t for p in _prompts(llm, 4) for t in p]
    reference = {tuple(shared): llm.generate([shared], greedy(OUT, min_tokens=OUT))[0].token_ids}
    computed: list[tuple[int, int]] = []
    execute = llm.engine.runner.execute

    def spy(scheduled: list[ScheduledSequence]):
        computed.extend((s.seq.num_computed_tokens, s.num_tokens) for s in scheduled)
        return execute(scheduled)

    llm.engine.runner.execute = spy  # type: ignore[method-assign]
    result = llm.generate([shared], greedy(OUT, min_tokens=OUT))[0]
    assert result.token_ids == reference[tuple(shared)]
    cached = (len(shared) - 1) // 16 * 16
    assert result.num_cached_tokens == cached > 0
    # The first step computed only the uncached tail of the prompt, then decoded.
    assert computed[0] == (cached, len(shared) - cached)
    assert all(n == 1 for _, n in computed[1:])
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits >= cached


def test_preemption_keeps_outputs(bundled_model_dir: Path, reference: dict) -> None:
    # 12 blocks of 16 tokens cannot hold 8 sequences of ~30 + 24 tokens at once.
    llm = LLM(str(bundled_model_dir), num_kv_blocks=12, max_model_len=128)
    prompts = _prompts(llm, 8)
    _assert_same(llm, reference, prompts)
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0
    assert stats.num_running == stats.num_waiting == 0
    assert llm.engine.block_manager.num_free_blocks == 12


def test_prompt_logprobs_survive_chunking_and_preemption(bundled_model_dir: Path) -> None:
    """Chunks recomputed after preemption must overwrite their rows, not append them."""
    calm = LLM(str(bundled_model_dir), kv_cache_memory=128 << 20, max_model_len=1024)
    tokens = [t for text in PROMPTS[:6] for t in calm.tokenizer.encode(text)]
    expected = calm.generate([tokens], greedy(4, prompt_logprobs=1))[0].prompt_logprobs
    squeezed = LLM(
        str(bundled_model_dir), num_kv_blocks=8, max_model_len=128, max_num_batched_tokens=16
    )
    others = _prompts(squeezed, 3)
    results = squeezed.generate(
        [tokens, *others],
        [greedy(4, prompt_logprobs=1, n=2)] + [greedy(24)] * 3,
        priorities=[1, 0, 0, 0],
    )
    assert squeezed.engine.stats().num_preemptions > 0
    got = results[0].prompt_logprobs
    assert got is not None and expected is not None
    assert len(got) == len(tokens) == len(expected)
    assert got[0] is None and expected[0] is None
    assert [lp.token_id for lp in got[1:]] == [lp.token_id for lp in expected[1:]]
    for ours, reference in zip(got[1:], expected[1:], strict=True):
        assert ours.logprob == pytest.approx(reference.logprob, abs=1e-3)


def test_n_greedy_choices_share_the_prompt(bundled_llm: LLM, reference: dict) -> None:
    prompt = _prompts(bundled_llm, 1)[0]
    result = bundled_llm.generate([prompt], greedy(OUT, min_tokens=OUT, n=3))[0]
    assert [c.index for c in result.choices] == [0, 1, 2]
    for choice in result.choices:
        assert choice.token_ids == reference[tuple(prompt)]
        assert choice.finish_reason == "length"


def test_more_choices_than_sequences_run_at_once_take_turns(
    make_random_model: Callable[[str], Path],
) -> None:
    """n past max_num_seqs (OpenAI allows 128): the siblings wait their turn, all finish."""
    llm = LLM(str(make_random_model("llama")), max_num_seqs=3, num_kv_blocks=64)
    result = llm.generate([[5, 17, 300, 9]], SamplingParams(n=20, max_tokens=3, seed=1))[0]
    assert [c.index for c in result.choices] == list(range(20))
    assert all(len(c.token_ids) == 3 for c in result.choices)
    assert llm.engine.block_manager.num_free_blocks == 64


def test_max_logprobs_bounds_what_a_request_may_ask_for(
    make_random_model: Callable[[str], Path],
) -> None:
    """vLLM's --max-logprobs (20 by default; -1: the whole vocabulary)."""
    folder = str(make_random_model("llama"))
    llm = LLM(folder, max_logprobs=2, num_kv_blocks=64)
    out = llm.generate([[5, 17, 300]], SamplingParams(max_tokens=2, logprobs=2))[0]
    assert all(len(step.top) == 2 for step in out.choices[0].logprobs)
    for name in ("logprobs", "prompt_logprobs"):
        with pytest.raises(ValueError, match="at most 2"):
            llm.engine.add_request("too-many", [5, 17], SamplingParams(**{name: 3}))
    assert not llm.engine.has_unfinished()
    vocab = LLM(folder, max_logprobs=-1, num_kv_blocks=64)
    wide = vocab.generate([[5, 17]], SamplingParams(max_tokens=1, logprobs=100))[0]
    assert len(wide.choices[0].logprobs[0].top) == 100
    with pytest.raises(ValueError, match="at most 49152"):
        vocab.engine.add_request("past-vocab", [5], SamplingParams(logprobs=49153))


def test_the_tokenizer_may_come_from_another_folder(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """vLLM's --tokenizer: weights from one folder, the tokenizer from another (a GGUF's
    or a repo's own); workers publish that tokenizer to API processes."""
    from workers.announce import tokenizer_fields

    source = make_random_model("llama")
    weights = tmp_path / "weights"
    weights.mkdir()
    for file in source.iterdir():
        if not file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(file, weights / file.name)
    with pytest.raises(ValueError, match="cannot load the tokenizer"):
        LLM(str(weights), num_kv_blocks=64)
    split = LLM(str(weights), tokenizer=str(source), num_kv_blocks=64)
    whole = LLM(str(source), num_kv_blocks=64)
    prompt = whole.tokenizer.encode("The capital of France is")
    assert split.tokenizer.encode("The capital of France is") == prompt
    assert (
        split.generate([prompt], greedy(8))[0].text == whole.generate([prompt], greedy(8))[0].text
    )
    published = tokenizer_fields(split.engine, {})
    assert published["tokenizer.json"] == (source / "tokenizer.json").read_text()


def test_seeded_sampling_is_reproducible_in_any_batch(bundled_llm: LLM) -> None:
    p0, *rest = _prompts(bundled_llm, 6)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=16)
    others = SamplingParams(temperature=1.0, max_tokens=16)
    alone = bundled_llm.generate([p0], seeded)[0].token_ids
    middle = bundled_llm.generate(
        [*rest[:2], p0, *rest[2:]], [others, others, seeded] + [others] * 3
    )
    first = bundled_llm.generate([p0, *rest], [seeded] + [others] * 5)
    assert middle[2].token_ids == alone
    assert first[0].token_ids == alone
    other_seed = SamplingParams(temperature=0.9, top_p=0.95, seed=99, max_tokens=16)
    assert bundled_llm.generate([p0], other_seed)[0].token_ids != alone


def test_the_engine_seed_makes_unseeded_sampling_repeat_from_start(
    make_random_model: Callable[[str], Path],
) -> None:
    """vLLM's --seed (default 0): an engine started again answers the same unseeded
    requests the same way; another seed answers them otherwise."""
    import torch

    model = str(make_random_model("llama"))
    sampled = SamplingParams(temperature=1.0, max_tokens=12)

    def answers(seed: int, before: int) -> list[list[int]]:
        torch.manual_seed(before)  # whatever drew random numbers in the process before
        torch.rand(before)
        llm = LLM(model, num_kv_blocks=64, seed=seed)
        prompt = llm.tokenizer.encode("The capital of France is")
        return [r.token_ids for r in llm.generate([prompt, prompt], sampled)]

    first = answers(7, before=1)
    assert first[0] != first[1]  # sampled, not greedy
    assert answers(7, before=2) == first
    assert answers(8, before=1) != first


def test_stop_conditions(bundled_llm: LLM) -> None:
    prompt = bundled_llm.tokenizer.encode("1, 2, 3, 4,")
    free = bundled_llm.generate([prompt], greedy(20))[0]
    assert free.text.startswith(" 5, 6, 7")
    stopped = bundled_llm.generate([prompt], greedy(20, stop=(" 7",)))[0]
    assert stopped.text == " 5, 6,"
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].stop_reason == " 7"
    kept = bundled_llm.generate([prompt], greedy(20, stop=(" 7",), include_stop_str_in_output=True))
    assert kept[0].text == " 5, 6, 7"
    seven = bundled_llm.tokenizer.encode(" 7")[-1]
    by_token = bundled_llm.generate([prompt], greedy(20, stop_token_ids=(seven,)))[0]
    assert by_token.choices[0].stop_reason == seven
    assert by_token.token_ids[-1] == seven
    # vLLM decodes the stopping token too when the stop is asked for in the output.
    token_kept = greedy(20, stop_token_ids=(seven,), include_stop_str_in_output=True)
    seven_text = bundled_llm.tokenizer.decode([seven])
    assert bundled_llm.generate([prompt], token_kept)[0].text == by_token.text + seven_text
    assert by_token.text + seven_text == " 5, 6, 7"
    # EOS as well: a special token, so as skip_special_tokens says.
    question = bundled_llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi"}], add_generation_prompt=True
    )
    ended = bundled_llm.generate([question], greedy(60))[0]
    assert ended.choices[0].finish_reason == "stop" and ended.choices[0].stop_reason is None
    eos_text = bundled_llm.tokenizer.decode([ended.token_ids[-1]], skip_special_tokens=False)
    assert eos_text == "<|im_end|>"
    shown = greedy(60, include_stop_str_in_output=True, skip_special_tokens=False)
    assert bundled_llm.generate([question], shown)[0].text == ended.text + eos_text
    skipped = greedy(60, include_stop_str_in_output=True)
    assert bundled_llm.generate([question], skipped)[0].text == ended.text
    # Before min_tokens, stop strings do not end generation (vLLM's semantics).
    late = bundled_llm.generate([prompt], greedy(20, stop=(" 7",), min_tokens=10))[0]
    assert late.text.startswith(" 5, 6, 7,") and len(late.token_ids) >= 10
    length = bundled_llm.generate([prompt], greedy(3))[0]
    assert length.choices[0].finish_reason == "length" and len(length.token_ids) == 3


def test_bad_words_and_allowed_token_ids(bundled_llm: LLM) -> None:
    """vLLM's bad_words keep a word out (in either spelling), allowed_token_ids keep every
    token in the set, through the engine's own tokenizing of the words."""
    tokenizer = bundled_llm.tokenizer
    prompt = tokenizer.encode("1, 2, 3, 4,")
    free = bundled_llm.generate([prompt], greedy(12))[0]
    assert free.text.startswith(" 5, 6, 7")
    banned = bundled_llm.generate([prompt], greedy(12, bad_words=("6",)))[0]
    spellings = {tuple(tokenizer.encode(w, add_special_tokens=False)) for w in ("6", " 6")}
    assert banned.text.startswith(" 5,") and " 6" not in banned.text
    for ids in spellings:
        window = len(ids)
        assert all(
            tuple(banned.token_ids[i : i + window]) != ids
            for i in range(len(banned.token_ids) - window + 1)
        )
    allowed = {tokenizer.encode(w, add_special_tokens=False)[-1] for w in (" 9", ",", " 8")}
    kept = bundled_llm.generate([prompt], greedy(12, allowed_token_ids=tuple(allowed)))[0]
    assert len(kept.token_ids) == 12 and set(kept.token_ids) <= allowed
    with pytest.raises(ValueError, match="allowed_token_ids: token id 49152 is outside"):
        bundled_llm.engine.add_request("x", prompt, greedy(2, allowed_token_ids=(49152,)))


def test_processed_logprobs_through_the_engine(
    make_random_model: Callable[[str], Path],
) -> None:
    """--logprobs-mode processed_logprobs: a top-k 3 request's reported distribution
    is the one it sampled from: three tokens that sum to 1, the rest -inf."""
    folder = str(make_random_model("llama"))
    llm = LLM(folder, logprobs_mode="processed_logprobs", num_kv_blocks=64)
    params = SamplingParams(temperature=0.7, top_k=3, logprobs=5, max_tokens=6, seed=4)
    steps = llm.generate([[5, 17, 300]], params)[0].choices[0].logprobs
    assert len(steps) == 6
    for step in steps:
        finite = [v for _, v in step.top if v != float("-inf")]
        assert len(finite) == 3
        assert sum(math.exp(v) for v in finite) == pytest.approx(1.0, abs=1e-4)
        assert step.rank <= 3
    raw_llm = LLM(folder, num_kv_blocks=64)
    raw = raw_llm.generate([[5, 17, 300]], params)[0]
    assert raw.token_ids == llm.generate([[5, 17, 300]], params)[0].token_ids
    assert all(v != float("-inf") for s in raw.choices[0].logprobs for _, v in s.top)
    # Prompt logprobs are logprobs in every mode, as vLLM computes them.
    scored = SamplingParams(max_tokens=1, prompt_logprobs=2)
    logits_llm = LLM(folder, logprobs_mode="raw_logits", num_kv_blocks=64)
    as_logits = logits_llm.generate([[5, 17, 300, 9]], scored)[0].prompt_logprobs
    as_logprobs = raw_llm.generate([[5, 17, 300, 9]], scored)[0].prompt_logprobs
    assert as_logits is not None and as_logprobs is not None
    for mine, theirs in zip(as_logits[1:], as_logprobs[1:], strict=True):
        assert mine is not None and theirs is not None
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-5) and mine.logprob < 0


def test_priority_orders_admission(bundled_model_dir: Path) -> None:
    llm = LLM(str(bundled_model_dir), max_num_seqs=1, kv_cache_memory=128 << 20, max_model_len=1024)
    prompts = _prompts(llm, 3)
    order: list[int] = []
    engine = llm.engine
    for i, (prompt, priority) in enumerate(zip(prompts, (5, 0, 1), strict=True)):
        engine.add_request(f"r{i}", prompt, greedy(2), priority=priority)
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                order.append(int(out.request_id[1:]))
    assert order == [1, 2, 0]


def test_background_prefill_cap_keeps_outputs(bundled_model_dir: Path, reference: dict) -> None:
    """Batch lines prefilled 5 tokens a step beside chats still give their greedy answers."""
    llm = LLM(
        str(bundled_model_dir),
        background_priority=100,
        background_prefill_tokens=5,
        kv_cache_memory=256 << 20,
        max_model_len=1024,
    )
    engine = llm.engine
    prompts = _prompts(llm, 6)
    background_steps: list[int] = []
    execute = engine.runner.execute

    def spy(scheduled: list[ScheduledSequence]):
        if any(s.seq.priority < 100 for s in scheduled):
            background_steps.append(
                sum(s.num_tokens for s in scheduled if s.seq.priority >= 100 and s.num_tokens > 1)
            )
        return execute(scheduled)

    engine.runner.execute = spy  # type: ignore[method-assign]
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, greedy(OUT, min_tokens=OUT), priority=100 * (i % 2))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.outputs[0].token_ids
    for i, prompt in enumerate(prompts):
        assert tokens[f"r{i}"] == reference[tuple(prompt)]
    assert background_steps and max(background_steps) <= 5


def test_abort_frees_blocks(bundled_model_dir: Path) -> None:
    llm = LLM(str(bundled_model_dir), kv_cache_memory=128 << 20, max_model_len=1024)
    engine = llm.engine
    total = engine.block_manager.num_free_blocks
    engine.add_request("a", _prompts(llm, 1)[0], greedy(100))
    engine.step()
    assert engine.block_manager.num_free_blocks < total
    assert engine.abort("a")
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == total
    assert not engine.abort("a")


def test_interrupt_answers_with_the_text_held_and_frees_blocks(bundled_model_dir: Path) -> None:
    """A pause with mode abort: each choice ends with finish_reason "abort", the text a
    detokenizer held back released, and choices not yet forked end too."""
    llm = LLM(str(bundled_model_dir), kv_cache_memory=128 << 20, max_model_len=1024)
    engine = llm.engine
    prompt = _prompts(llm, 1)[0]
    total = engine.block_manager.num_free_blocks
    engine.add_request("a", prompt, SamplingParams(temperature=0.0, max_tokens=100, n=2))
    streamed: dict[int, str] = {0: "", 1: ""}
    tokens: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(4):
        for out in engine.step():
            for choice in out.outputs:
                streamed[choice.index] += choice.text
                tokens[choice.index] += choice.token_ids
    out = engine.interrupt("a")
    assert out is not None and out.finished
    assert [c.finish_reason for c in out.outputs] == ["abort", "abort"]
    for choice in out.outputs:
        assert choice.token_ids == []
        assert choice.num_output_tokens == len(tokens[choice.index]) > 0
        text = streamed[choice.index] + choice.text
        assert text == engine.tokenizer.decode(tokens[choice.index])
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == total
    assert engine.interrupt("a") is None  # finished: nothing to answer

    engine.add_request("b", prompt, SamplingParams(temperature=0.0, max_tokens=10, n=3))
    out = engine.interrupt("b")  # before its prompt ran: no choice has forked yet
    assert out is not None and out.finished
    assert sorted(c.index for c in out.outputs) == [0, 1, 2]
    assert all(c.text == "" and c.num_output_tokens == 0 for c in out.outputs)
    assert not engine.has_unfinished()

    beams = SamplingParams(temperature=0.0, max_tokens=10, n=2, use_beam_search=True)
    engine.add_request("c", prompt, beams)
    engine.step()
    assert engine.interrupt("c") is None  # no partial answer: aborted all the same
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == total


def test_invalid_requests_raise_value_error(bundled_llm: LLM) -> None:
    engine = bundled_llm.engine
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request("empty", [], greedy(1))
    with pytest.raises(ValueError, match="maximum context length"):
        engine.add_request("long", [5] * engine.max_model_len, greedy(1))
    with pytest.raises(ValueError, match="logit_bias"):
        engine.add_request("bias", [5], greedy(1, logit_bias={10**7: 1.0}))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    assert not engine.has_unfinished()


def test_cpu_threads_sets_how_many_threads_torch_computes_with(
    make_random_model: Callable[[str], Path],
) -> None:
    """Engines sharing one CPU (`conveyor serve -dp N`) each take their part of it."""
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine

    before = torch.get_num_threads()
    try:
        LLMEngine(EngineConfig(model=str(make_random_model("llama")), cpu_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="cpu_threads must be at least 1"):
        EngineConfig(cpu_threads=0)
