"""Sequence classifiers (the pooling runner with a `*ForSequenceClassification`
checkpoint): HF transformers' logits are the oracle, for every prompt of a batch,
chunked or not, and the labels are the checkpoint's id2label."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers

from engine.llm import LLM
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError

from .test_pooling import ATOL, PROMPTS

COMMON = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.3,
    eos_token_id=2,
    bos_token_id=1,
)


def _classifier(
    tmp_path: Path, bundled_model_dir: Path, family: str, labels: list[str]
) -> tuple[Path, transformers.PreTrainedModel]:
    torch.manual_seed(0)
    names = dict(enumerate(labels))
    extra = dict(num_labels=len(labels), id2label=names, label2id={v: k for k, v in names.items()})
    if family == "llama":
        model = transformers.LlamaForSequenceClassification(
            transformers.LlamaConfig(**COMMON, **extra)
        )
    else:
        config = transformers.Qwen3Config(**COMMON, **extra, head_dim=16)
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


def test_the_workers_publish_the_labels(tmp_path: Path, bundled_model_dir: Path) -> None:
    import json

    from workers.announce import tokenizer_fields

    folder, _ = _classifier(tmp_path, bundled_model_dir, "llama", ["spam", "ham"])
    llm = LLM(str(folder), num_kv_blocks=64)
    published = json.loads(tokenizer_fields(llm.engine, {})["config.json"])
    assert published["labels"] == ["spam", "ham"]
