"""Sequence classifiers (the pooling runner with a `*ForSequenceClassification`
checkpoint): HF transformers' logits are the oracle, for every prompt of a batch,
chunked or not, and the labels are the checkpoint's id2label."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from engine.configuration_error import ConfigurationError
from engine.llm import LLM
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError

from ..conftest import TINY_CONFIG
from .test_pooling import ATOL, PROMPTS


def _classifier(
    tmp_path: Path, bundled_model_dir: Path, family: str, labels: list[str]
) -> tuple[Path, transformers.PreTrainedModel]:
    torch.manual_seed(0)
    names = dict(enumerate(labels))
    extra = dict(num_labels=len(labels), id2label=names, label2id={v: k for k, v in names.items()})
    if family == "llama":
        model = transformers.LlamaForSequenceClassification(
            transformers.LlamaConfig(**TINY_CONFIG, **extra)
        )
    else:
        config = transformers.Qwen3Config(**TINY_CONFIG, **extra, head_dim=16)
        model = transformers.Qwen3ForSequenceClassification(config)
    folder = tmp_path / family
    model.eval().save_pretrained(folder)
    for file in bundled_model_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, folder / file.name)
    return folder, model


@pytest.mark.parametrize(
    ("family", "labels"), [("llama", ["negative", "neutral", "positive"]), ("qwen3", ["score"])]
)
def test_logits_and_probabilities_match_hf(
    tmp_path: Path, bundled_model_dir: Path, family: str, labels: list[str]
) -> None:
    folder, hf = _classifier(tmp_path, bundled_model_dir, family, labels)
    # A small step budget: long prompts are classified across several chunks.
    llm = LLM(str(folder), max_num_batched_tokens=16, num_kv_blocks=64)
    assert llm.engine.model_config.labels == tuple(labels)
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    logits = [r.embedding for r in llm.embed(prompts, PoolingParams(activation=False))]
    probs = [r.embedding for r in llm.embed(prompts)]
    for ids, ours, our_probs in zip(prompts, logits, probs, strict=True):
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0]
        assert ours is not None and our_probs is not None
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
        activated = torch.sigmoid(expected) if len(labels) == 1 else torch.softmax(expected, -1)
        torch.testing.assert_close(our_probs, activated, atol=ATOL, rtol=0)
    with pytest.raises(SamplingParamError, match="classifier"):
        llm.embed(prompts[:1], PoolingParams(dimensions=2))
    # vLLM's LLM.classify: the probabilities and the most likely label's name.
    for result, our_probs in zip(llm.classify(prompts), probs, strict=True):
        assert result.probs == pytest.approx(our_probs.tolist())
        assert result.label == labels[int(our_probs.argmax())]


def test_the_workers_publish_the_labels(tmp_path: Path, bundled_model_dir: Path) -> None:
    import json

    from workers.announce import tokenizer_fields

    folder, _ = _classifier(tmp_path, bundled_model_dir, "llama", ["spam", "ham"])
    llm = LLM(str(folder), num_kv_blocks=64)
    published = json.loads(tokenizer_fields(llm.engine, {})["config.json"])
    assert published["labels"] == ["spam", "ham"]


def test_a_chat_model_reranks_through_its_yes_and_no_rows(
    make_random_model: Callable[[str], Path],
) -> None:
    """vLLM's way to serve Qwen3-Reranker: the causal LM under classifier_from_token. The
    score is the model's own P("yes") against P("no") at the prompt's end."""
    folder = make_random_model("qwen3")  # tied embeddings, as Qwen3-Reranker-0.6B
    overrides = {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
    }
    llm = LLM(str(folder), hf_overrides=overrides, num_kv_blocks=64)
    assert llm.engine.model_config.labels == ("LABEL_0",)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    no, yes = llm.tokenizer.hf_tokenizer.convert_tokens_to_ids(["no", "yes"])
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    for ids, result in zip(prompts, llm.embed(prompts), strict=True):
        with torch.no_grad():
            last = hf(torch.tensor([ids])).logits[0, -1]
        expected = torch.softmax(last[[no, yes]], -1)[1]
        assert result.embedding is not None
        torch.testing.assert_close(result.embedding, expected.reshape(1), atol=ATOL, rtol=0)
    rows = LLM(
        str(folder),
        hf_overrides={
            **overrides,
            "method": "no_post_processing",
            "is_original_qwen3_reranker": False,
        },
        num_kv_blocks=64,
    )
    assert rows.engine.model_config.labels == ("LABEL_0", "LABEL_1")
    logits = rows.embed(prompts[:1], PoolingParams(activation=False))[0].embedding
    with torch.no_grad():
        last = hf(torch.tensor([prompts[0]])).logits[0, -1]
    torch.testing.assert_close(logits, last[[no, yes]], atol=ATOL, rtol=0)
    with pytest.raises(ConfigurationError, match="not tokens of this model"):
        LLM(str(folder), hf_overrides={**overrides, "classifier_from_token": ["no", "zzqx"]})
    # Without the architecture the flag would be ignored: refused instead.
    with pytest.raises(ConfigurationError, match="ForSequenceClassification"):
        LLM(str(folder), hf_overrides={"classifier_from_token": ["no", "yes"]})


def test_an_untied_lm_heads_rows_and_a_bf16_body_keep_a_float32_head(
    make_random_model: Callable[[str], Path],
) -> None:
    """The yes/no rows come from lm_head.weight when it is not tied. In bfloat16 the
    head stays float32 (vLLM's head_dtype): close scores must not round to ties."""
    folder = make_random_model("llama")  # untied
    overrides = {
        "architectures": ["LlamaForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
    }
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = [5, 17, 300, 9, 41]
    no, yes = 4607, 10407
    with torch.no_grad():
        last = hf(torch.tensor([ids])).logits[0, -1]
    expected = torch.softmax(last[[no, yes]], -1)[1]
    f32 = LLM(str(folder), hf_overrides=overrides, num_kv_blocks=64)
    result = f32.embed([ids])[0].embedding
    assert result is not None
    torch.testing.assert_close(result, expected.reshape(1), atol=ATOL, rtol=0)
    bf16 = LLM(str(folder), hf_overrides=overrides, dtype="bfloat16", num_kv_blocks=64)
    assert bf16.engine.runner.model.score.weight.dtype == torch.float32
    logits = bf16.embed([ids], PoolingParams(activation=False))[0].embedding
    assert logits is not None and logits.dtype == torch.float32
    exact = (last[yes] - last[no]).reshape(1)
    torch.testing.assert_close(logits, exact, atol=0.1, rtol=0.02)  # the bf16 body's error


def test_the_pooler_config_sets_a_classifiers_default_activation(
    tmp_path: Path, bundled_model_dir: Path, make_random_model: Callable[[str], Path]
) -> None:
    folder, hf = _classifier(tmp_path, bundled_model_dir, "llama", ["a", "b"])
    ids = [5, 17, 300]
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    for key in ("use_activation", "activation", "softmax"):
        llm = LLM(str(folder), pooler_config={key: False}, num_kv_blocks=64)
        logits = llm.embed([ids])[0].embedding
        assert logits is not None
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
        asked = llm.embed([ids], PoolingParams(activation=True))[0].embedding
        torch.testing.assert_close(asked, torch.softmax(expected, -1), atol=ATOL, rtol=0)
    with pytest.raises(ConfigurationError, match="use_activation applies to classification"):
        LLM(str(make_random_model("llama")), runner="pooling", pooler_config={"softmax": True})
