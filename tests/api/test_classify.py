"""vLLM's /classify, and /score and /rerank with a cross-encoder, against scripted
workers of a classifier: labels named from what workers publish, texts paired as the
tokenizer pairs them, and each pooling model kept to the endpoints of its task."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..encoder_models import write_tokenizer
from .conftest import Stack, worker_on
from .fakes import FakeWorker, fake_label_probs

SENTIMENT = "fake-sentiment"
RERANKER = "fake-reranker"
EMBEDDER = "fake-embedder"
LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def pooling_workers(stack: Stack) -> Iterator[tuple[FakeWorker, FakeWorker, FakeWorker]]:
    with (
        worker_on(stack, SENTIMENT, instance="cls-1", runner="pooling", labels=LABELS) as a,
        worker_on(stack, RERANKER, instance="rr-1", runner="pooling", labels=("relevant",)) as b,
        worker_on(stack, EMBEDDER, instance="emb-1", runner="pooling") as c,
    ):
        yield a, b, c


def test_classify_names_the_most_likely_label(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker, FakeWorker]
) -> None:
    sentiment = pooling_workers[0]
    texts = ["I loved it", "Terrible, never again.", "ok"]
    for path in ("/classify", "/v1/classify"):
        reply = client.post(path, json={"model": SENTIMENT, "input": texts})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "list" and body["id"].startswith("classify-")
        prompts = [sentiment.tokenizer.encode(t) for t in texts]
        for index, (data, ids) in enumerate(zip(body["data"], prompts, strict=True)):
            probs = fake_label_probs(ids, 3)
            assert data["index"] == index and data["num_classes"] == 3
            assert data["probs"] == pytest.approx(probs)
            assert data["label"] == LABELS[probs.index(max(probs))]
        assert body["usage"] == {
            "prompt_tokens": sum(len(ids) for ids in prompts),
            "total_tokens": sum(len(ids) for ids in prompts),
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
    raw = client.post("/classify", json={"model": SENTIMENT, "input": "hi", "activation": False})
    assert raw.status_code == 200
    assert sentiment.received[-1].pooling == {
        "dimensions": None,
        "normalize": None,
        "activation": False,
        "task": "classify",
    }
    ids = sentiment.tokenizer.encode("hi")
    logits = [math.log(p) for p in fake_label_probs(ids, 3)]
    assert raw.json()["data"][0]["probs"] == pytest.approx(logits)
    # vLLM's names, in its order: softmax, then activation, then use_activation.
    for flags, sent in (
        ({"softmax": False, "activation": True}, False),
        ({"activation": False, "use_activation": True}, False),
        ({"use_activation": False}, False),
        ({}, None),
    ):
        client.post("/classify", json={"model": SENTIMENT, "input": "hi", **flags})
        assert sentiment.received[-1].pooling.get("activation") is sent, flags
    refused = client.post("/classify", json={"model": SENTIMENT, "input": "x", "dimensions": 2})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "dimensions"


def test_each_pooling_model_keeps_to_its_task(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker, FakeWorker]
) -> None:
    for path, model in (
        ("/classify", EMBEDDER),
        ("/v1/embeddings", SENTIMENT),
        ("/score", SENTIMENT),  # three labels: not a cross-encoder
    ):
        body = {"model": model, "input": "x", "text_1": "a", "text_2": "b"}
        refused = client.post(path, json=body)
        assert refused.status_code == 400, (path, refused.text)
        error = refused.json()["error"]
        assert error["param"] == "model" and error["code"] == "model_not_supported"
    generator = client.post("/classify", json={"model": "fake-model", "input": "x"})
    assert generator.status_code == 400


def test_a_cross_encoder_scores_each_pair_as_one_prompt(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker, FakeWorker]
) -> None:
    reranker = pooling_workers[1]
    hf = reranker.tokenizer.hf_tokenizer
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "France"]
    reranker.received.clear()
    reply = client.post("/score", json={"model": RERANKER, "text_1": "capital", "text_2": docs})
    assert reply.status_code == 200, reply.text
    pairs = [hf("capital", doc)["input_ids"] for doc in docs]
    assert [r.prompt_token_ids for r in reranker.received] == pairs
    assert [d["score"] for d in reply.json()["data"]] == pytest.approx(
        [fake_label_probs(ids, 1)[0] for ids in pairs]
    )
    ranked = client.post(
        "/rerank", json={"model": RERANKER, "query": "capital", "documents": docs, "top_n": 2}
    ).json()
    assert [r["index"] for r in ranked["results"]] == [2, 1]  # shortest pair scores highest
    # vLLM's use_activation: the logit instead of the probability.
    body = {"model": RERANKER, "text_1": "capital", "text_2": docs[:1], "use_activation": False}
    logit = client.post("/score", json=body).json()["data"][0]["score"]
    assert logit == pytest.approx(math.log(fake_label_probs(pairs[0], 1)[0]))
    refused = client.post("/score", json={**body, "use_activation": "x"})
    assert refused.status_code == 400
    cut = client.post(
        "/score",
        json={
            "model": RERANKER,
            "text_1": "capital",
            "text_2": docs[0],
            "truncate_prompt_tokens": 3,
        },
    )
    assert cut.status_code == 200
    assert reranker.received[-1].prompt_token_ids == pairs[0][:3]
    # The longer text is cut first (vLLM's truncation): the short one survives whole.
    long_query = {
        "model": RERANKER,
        "text_1": "a b c d e",
        "text_2": "f",
        "truncate_prompt_tokens": 2,
    }
    assert client.post("/score", json=long_query).status_code == 200
    f = hf("f", add_special_tokens=False)["input_ids"]
    assert reranker.received[-1].prompt_token_ids == hf("a")["input_ids"] + f


def test_invocations_classifies_an_input_for_a_classifier(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker, FakeWorker]
) -> None:
    """SageMaker's one path: an `input` body is a classification for a classifier and an
    embedding for an embedding model, as vLLM routes it."""
    body = {"input": ["I loved it", "ok"], "use_activation": False}
    classified = client.post("/invocations", json={"model": SENTIMENT, **body})
    assert classified.status_code == 200, classified.text
    data = classified.json()["data"]
    assert [d["num_classes"] for d in data] == [3, 3] and all("label" in d for d in data)
    assert pooling_workers[0].received[-1].pooling["activation"] is False
    embedded = client.post("/invocations", json={"model": EMBEDDER, "input": "ok"})
    assert embedded.status_code == 200 and "embedding" in embedded.json()["data"][0]


def test_a_reranker_made_from_a_chat_model_reads_a_pair_as_one_text(
    client: httpx.Client, stack: Stack
) -> None:
    """vLLM reads /score's pairs for a classifier_from_token model (Qwen3-Reranker) as the
    two texts joined: the first holds its template's start, the second its end."""
    with worker_on(
        stack, "fake-qwen3-reranker", instance="qr-1", runner="pooling", labels=("LABEL_0",),
        concat_pairs=True,
    ) as reranker:  # fmt: skip
        body = {"model": "fake-qwen3-reranker", "text_1": "<Query>: a", "text_2": "<Doc>: bank"}
        assert client.post("/score", json=body).status_code == 200
        expected = reranker.tokenizer.encode("<Query>: a<Doc>: bank")
        assert reranker.received[-1].prompt_token_ids == expected


@pytest.mark.parametrize(("type_vocab_size", "marked"), [(2, True), (1, False)])
def test_a_bert_cross_encoder_is_told_where_the_second_text_starts(
    client: httpx.Client, stack: Stack, tmp_path: Path, type_vocab_size: int, marked: bool
) -> None:
    """A BERT reranker (ms-marco MiniLM) reads a pair's second text as token type 1: the
    worker gets where it starts (for one text, its end). An XLM-R one (bge-reranker) has
    one token type: not."""
    folder = tmp_path / "bert-tokenizer"
    hf = write_tokenizer(folder)
    model = f"fake-reranker-{type_vocab_size}-types"
    with worker_on(
        stack, model, model_dir=folder, instance="br-1", runner="pooling", labels=("LABEL_0",),
        type_vocab_size=type_vocab_size,
    ) as reranker:  # fmt: skip
        docs = ["paris is the capital of france", "rain"]
        body = {"model": model, "query": "capital of france", "documents": docs}
        reply = client.post("/rerank", json=body)
        assert reply.status_code == 200, reply.text
        for received, doc in zip(reranker.received, docs, strict=True):
            encoded = hf("capital of france", doc, return_token_type_ids=True)
            assert received.prompt_token_ids == encoded["input_ids"]
            start = encoded["token_type_ids"].index(1)
            assert received.pooling.get("segment_start") == (start if marked else None)
        # One text: its "second" starts at its end (every token type 0), still marked so
        # the worker knows this API sends token types.
        reply = client.post("/classify", json={"model": model, "input": "rain"})
        assert reply.status_code == 200, reply.text
        single = reranker.received[-1]
        expected = len(single.prompt_token_ids) if marked else None
        assert single.pooling.get("segment_start") == expected
