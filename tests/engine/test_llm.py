"""The offline `LLM` as scripts written for vLLM's call it: prompt dicts, vLLM's keyword
names and result names, chat's template options, and a failed call leaves nothing
queued for the next one."""

from __future__ import annotations

import pytest

from engine.llm import LLM, greedy
from engine.sampling_params import SamplingParams


def test_vllms_prompt_dicts_are_prompts(bundled_llm: LLM) -> None:
    """A lone {"prompt_token_ids": ...} ran as the text "prompt_token_ids"."""
    ids = bundled_llm.tokenizer.encode("The capital of France is")
    params = greedy(4)
    (expected,) = bundled_llm.generate(ids, params)
    (alone,) = bundled_llm.generate({"prompt_token_ids": ids}, params)
    listed = bundled_llm.generate(
        [{"prompt_token_ids": ids}, {"prompt": "The capital of France is"}], params
    )
    assert alone.prompt_token_ids == ids and alone.token_ids == expected.token_ids
    assert [r.token_ids for r in listed] == [expected.token_ids] * 2
    assert (alone.prompt, listed[1].prompt) == (None, "The capital of France is")
    with pytest.raises(TypeError, match="prompt_token_ids"):
        bundled_llm.generate({"text": "x"}, params)


def test_vllms_names_read_and_call(bundled_llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=3, logprobs=1, stop=None)
    (out,) = bundled_llm.generate("Hello", sampling_params=params, use_tqdm=False, priority=[0])
    (choice,) = out.outputs
    assert out.finished and choice.text == out.text
    assert choice.logprobs is not None
    assert choice.cumulative_logprob == pytest.approx(sum(e.logprob for e in choice.logprobs))
    assert bundled_llm.get_tokenizer() is bundled_llm.tokenizer.hf_tokenizer


def test_chat_takes_vllms_template_options(bundled_llm: LLM) -> None:
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "The colour is"},
    ]
    (continued,) = bundled_llm.chat(
        messages, greedy(3), add_generation_prompt=False, continue_final_message=True
    )
    rendered = bundled_llm.get_tokenizer().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False, continue_final_message=True
    )
    assert rendered.endswith("The colour is") and continued.prompt == rendered
    assert continued.prompt_token_ids == bundled_llm.tokenizer.encode(
        rendered, add_special_tokens=False
    )
    with pytest.raises(ValueError, match="add_generation_prompt=False"):
        bundled_llm.chat(messages, greedy(1), continue_final_message=True)


def test_a_failed_or_interrupted_call_leaves_nothing_for_the_next(
    bundled_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a ValueError took a call's requests back: one interrupted (Ctrl-C) left them
    queued, and the next call ran their 200 tokens first."""

    def interrupted() -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(bundled_llm.engine, "step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            bundled_llm.generate(["Hello", "World"], greedy(200))
    assert not bundled_llm.engine.has_unfinished()
    with pytest.raises(TypeError, match="prompts\\[1\\]"):
        bundled_llm.generate(["Hello", {"nothing": 1}], greedy(200))
    with pytest.raises(TypeError, match="SamplingParams"):
        bundled_llm.generate("Hello", {"max_tokens": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one per prompt"):  # was an IndexError midway
        bundled_llm.generate(["Hello", "World"], greedy(2), priority=[0])
    assert not bundled_llm.engine.has_unfinished()


def test_token_ids_from_numpy_or_torch_are_prompts(bundled_llm: LLM) -> None:
    import numpy as np
    import torch

    ids = bundled_llm.tokenizer.encode("Hello there")
    (expected,) = bundled_llm.generate(ids, greedy(2))
    forms = [np.array(ids), torch.tensor(ids), tuple(ids), [np.int64(t) for t in ids]]
    for form in forms:
        (out,) = bundled_llm.generate(form, greedy(2))
        assert out.prompt_token_ids == ids and out.token_ids == expected.token_ids
        assert all(type(t) is int for t in out.prompt_token_ids)
    assert len(bundled_llm.generate([np.array(ids), torch.tensor(ids)], greedy(2))) == 2
