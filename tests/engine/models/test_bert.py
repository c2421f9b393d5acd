"""Encoders (BERT, XLM-RoBERTa) on the pooling runner: transformers is the oracle.

Each prompt's vector (or a cross-encoder's logits) must be what HF computes for
it alone, whatever else shares the step: prompts of many lengths in one batch,
a budget smaller than a prompt (the engine raises it: an encoder's prompt is
never chunked), and a pair's token types.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import transformers

from engine.configuration_error import ConfigurationError
from engine.llm import LLM
from engine.lora_config import LoRAConfig
from engine.pooler_config import PoolingType
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError

from ...encoder_models import make_encoder

TEXTS = [
    "the capital of france is paris",
    "a",
    "how many people live in berlin? which one do you like best",
    "cats and dogs are animals",
    "what a city " * 6,
]
PAIRS = [
    ("what is the capital of france", "paris is the capital of france"),
    ("weather today", "rain and sun"),
    ("cats", "dogs are animals which one do you like best"),
]
ATOL = 2e-5


def _hf_hidden(model: transformers.PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).last_hidden_state[0]


def _prompts(llm: LLM) -> list[list[int]]:
    ids = [llm.tokenizer.hf_tokenizer(text)["input_ids"] for text in TEXTS]
    return [*ids, [7]]  # and one bare token: a one-row step, laid out as a decode


@pytest.mark.parametrize("architecture", ["BertModel", "XLMRobertaModel"])
def test_cls_embeddings_match_hf(tmp_path: Path, architecture: str) -> None:
    """No sentence-transformers files: the first ([CLS]) token's state, normalised, as
    vLLM pools encoders; a budget under the longest prompt is raised, never chunks."""
    hf = make_encoder(tmp_path, architecture)
    llm = LLM(str(tmp_path), max_num_batched_tokens=8, num_kv_blocks=64, block_size=4)
    engine = llm.engine
    assert engine.pooler_config is not None
    assert engine.pooler_config.pooling_type is PoolingType.CLS
    assert engine.config.max_num_batched_tokens == engine.max_model_len
    prompts = _prompts(llm)
    assert max(len(p) for p in prompts) > 8
    for ids, result in zip(prompts, llm.embed(prompts), strict=True):
        expected = F.normalize(_hf_hidden(hf, ids)[0], dim=-1)
        torch.testing.assert_close(result.embedding, expected, atol=ATOL, rtol=0)


def test_sentence_transformers_mean_pooling(tmp_path: Path) -> None:
    hf = make_encoder(tmp_path, "BertModel", pooling="mean")
    llm = LLM(str(tmp_path), num_kv_blocks=64)
    prompts = _prompts(llm)
    for ids, result in zip(prompts, llm.embed(prompts), strict=True):
        expected = F.normalize(_hf_hidden(hf, ids).mean(dim=0), dim=-1)
        torch.testing.assert_close(result.embedding, expected, atol=ATOL, rtol=0)


def test_sentence_transformers_max_seq_length_is_the_context(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 learned 256 of its 512 positions: vLLM's context is 256, and a
    longer max_model_len is refused."""
    make_encoder(tmp_path, "BertModel", pooling="mean")
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 16}')
    llm = LLM(str(tmp_path), num_kv_blocks=64)
    assert llm.engine.max_model_len == 16
    with pytest.raises(ValueError, match="maximum context length of 16"):
        llm.embed([list(range(5, 22))])
    assert LLM(str(tmp_path), num_kv_blocks=64, max_model_len=8).engine.max_model_len == 8
    with pytest.raises(ConfigurationError, match="max_seq_length of its sentence_bert"):
        LLM(str(tmp_path), num_kv_blocks=64, max_model_len=32)


def test_a_cross_encoder_pools_its_first_token_only(tmp_path: Path) -> None:
    make_encoder(tmp_path, "BertForSequenceClassification", num_labels=1)
    with pytest.raises(ConfigurationError, match="first token"):
        LLM(str(tmp_path), num_kv_blocks=64, pooler_config={"pooling_type": "MEAN"})


def test_a_prompt_never_reuses_cached_blocks(tmp_path: Path) -> None:
    """Two prompts sharing their first blocks: an encoder's keys depend on what follows,
    so the second is computed in full (and matches HF), with no cache hit."""
    hf = make_encoder(tmp_path, "BertModel")
    llm = LLM(str(tmp_path), num_kv_blocks=64, block_size=4)
    first = llm.tokenizer.hf_tokenizer("the capital of france is paris")["input_ids"]
    second = llm.tokenizer.hf_tokenizer("the capital of france is a city")["input_ids"]
    llm.embed([first])
    (result,) = llm.embed([second])
    torch.testing.assert_close(
        result.embedding, F.normalize(_hf_hidden(hf, second)[0], dim=-1), atol=ATOL, rtol=0
    )
    assert llm.engine.scheduler.stats.prefix_cache_hits == 0


def _pair(
    tokenizer: transformers.PreTrainedTokenizerBase, query: str, doc: str
) -> tuple[list[int], list[int]]:
    encoded = tokenizer(query, doc, return_token_type_ids=True)
    return encoded["input_ids"], encoded["token_type_ids"]


@pytest.mark.parametrize(
    ("architecture", "labels"),
    [("BertForSequenceClassification", 1), ("XLMRobertaForSequenceClassification", 3)],
)
def test_cross_encoder_logits_match_hf(tmp_path: Path, architecture: str, labels: int) -> None:
    """A pair as its tokenizer encodes it; BERT's second text has token type 1, passed
    as where it starts (PoolingParams.segment_start)."""
    hf = make_encoder(tmp_path, architecture, num_labels=labels)
    llm = LLM(str(tmp_path), num_kv_blocks=64, block_size=4)
    assert llm.engine.model_config.num_labels == labels
    tokenizer = llm.tokenizer.hf_tokenizer
    bert = architecture.startswith("Bert")
    for query, doc in PAIRS:
        ids, types = _pair(tokenizer, query, doc)
        params = PoolingParams(activation=False)
        if bert:
            params = PoolingParams(activation=False, segment_start=types.index(1))
        else:
            types = [0] * len(ids)  # RoBERTa's one token type
        (result,) = llm.embed([ids], params)
        with torch.no_grad():
            expected = hf(torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0]
        torch.testing.assert_close(result.embedding, expected, atol=ATOL, rtol=0)
        (probs,) = llm.embed([ids], PoolingParams(segment_start=params.segment_start))
        activated = torch.sigmoid(expected) if labels == 1 else expected.softmax(-1)
        torch.testing.assert_close(probs.embedding, activated, atol=ATOL, rtol=0)


def test_token_types_change_the_score(tmp_path: Path) -> None:
    """Without the segment start BERT reads the pair as one text: another score (so the
    test above could not pass by ignoring token types)."""
    make_encoder(tmp_path, "BertForSequenceClassification", num_labels=1)
    llm = LLM(str(tmp_path), num_kv_blocks=64)
    ids, types = _pair(llm.tokenizer.hf_tokenizer, *PAIRS[0])
    (with_types,) = llm.embed([ids], PoolingParams(segment_start=types.index(1)))
    (without,) = llm.embed([ids])
    assert abs(float(with_types.embedding[0]) - float(without.embedding[0])) > 1e-4


def test_segment_start_is_checked(tmp_path: Path) -> None:
    make_encoder(tmp_path / "bert", "BertForSequenceClassification", num_labels=1)
    make_encoder(tmp_path / "xlmr", "XLMRobertaForSequenceClassification", num_labels=1)
    bert = LLM(str(tmp_path / "bert"), num_kv_blocks=64)
    with pytest.raises(SamplingParamError, match="past the prompt"):
        bert.embed([[2, 5, 3]], PoolingParams(segment_start=4))
    # At the prompt's end: one text, every token type 0 (how the API sends a single text).
    (at_end,) = bert.embed([[2, 5, 3]], PoolingParams(segment_start=3))
    (untyped,) = bert.embed([[2, 5, 3]])
    torch.testing.assert_close(at_end.embedding, untyped.embedding, atol=0, rtol=0)
    xlmr = LLM(str(tmp_path / "xlmr"), num_kv_blocks=64)
    with pytest.raises(SamplingParamError, match="does not tell"):
        xlmr.embed([[2, 5, 3, 6, 3]], PoolingParams(segment_start=3))


def _add_tensors(folder: Path, extra: dict[str, torch.Tensor]) -> None:
    """Save `extra` into the folder's checkpoint, as some published checkpoints carry them."""
    path = folder / "model.safetensors"
    tensors = {**safetensors.torch.load_file(path), **extra}
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})


def test_a_roberta_classifier_ignores_a_saved_pooler(tmp_path: Path) -> None:
    """roberta-large-mnli keeps RoBERTa's unused pooler next to its head's own dense
    layer: the head must be the dense layer's (as transformers loads it)."""
    hf = make_encoder(tmp_path, "XLMRobertaForSequenceClassification", num_labels=3)
    hidden = hf.config.hidden_size
    _add_tensors(
        tmp_path,
        {
            "roberta.pooler.dense.weight": torch.randn(hidden, hidden),
            "roberta.pooler.dense.bias": torch.randn(hidden),
        },
    )
    llm = LLM(str(tmp_path), num_kv_blocks=64)
    ids = llm.tokenizer.hf_tokenizer(TEXTS[0])["input_ids"]
    (result,) = llm.embed([ids], PoolingParams(activation=False))
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(result.embedding, expected, atol=ATOL, rtol=0)


def test_two_names_for_one_weight_are_refused(tmp_path: Path) -> None:
    hf = make_encoder(tmp_path, "BertModel")
    table = hf.embeddings.word_embeddings.weight.detach()
    _add_tensors(tmp_path, {"bert.embeddings.word_embeddings.weight": torch.zeros_like(table)})
    with pytest.raises(ValueError, match="already loaded"):
        LLM(str(tmp_path), num_kv_blocks=64)


def test_an_encoder_cannot_generate_or_take_adapters(tmp_path: Path) -> None:
    make_encoder(tmp_path, "BertModel")
    with pytest.raises(ConfigurationError, match="no LM head"):
        LLM(str(tmp_path), runner="generate", num_kv_blocks=64)
    with pytest.raises(ConfigurationError, match="LoRA"):
        LLM(str(tmp_path), num_kv_blocks=64, lora_config=LoRAConfig((), runtime_updates=True))
