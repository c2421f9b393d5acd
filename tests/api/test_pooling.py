"""vLLM's /pooling against scripted workers of an embedding model and a classifier: each
model answers with its own task's output (the vector /v1/embeddings gives, the
probabilities /classify gives), the task's knobs reach the workers, and what the model
cannot do is a 400 before anything is queued."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Stack, worker_on
from .fakes import FakeWorker, fake_embedding_values, fake_label_probs

SENTIMENT = "fake-pool-sentiment"
EMBEDDER = "fake-pool-embedder"
LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def pooling_workers(stack: Stack) -> Iterator[tuple[FakeWorker, FakeWorker]]:
    with (
        worker_on(stack, SENTIMENT, instance="pool-cls", runner="pooling", labels=LABELS) as a,
        worker_on(
            stack, EMBEDDER, instance="pool-emb", runner="pooling", matryoshka_dimensions=(3, 6)
        ) as b,
    ):
        yield a, b


def test_an_embedding_model_pools_to_its_embeddings(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker]
) -> None:
    embedder = pooling_workers[1]
    texts = ["hello there", "a longer sentence than the first one"]
    reply = client.post("/pooling", json={"model": EMBEDDER, "input": texts})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list" and body["id"].startswith("pool-")
    assert body["model"] == EMBEDDER
    prompts = [embedder.tokenizer.encode(t) for t in texts]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert {d["object"] for d in body["data"]} == {"pooling"}
    for data, ids in zip(body["data"], prompts, strict=True):
        assert data["data"] == pytest.approx(fake_embedding_values(ids, None))
    tokens = sum(len(ids) for ids in prompts)
    assert body["usage"] == {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }
    embeddings = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}).json()
    assert [d["data"] for d in body["data"]] == [d["embedding"] for d in embeddings["data"]]


def test_embedding_knobs_reach_the_worker(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker]
) -> None:
    embedder = pooling_workers[1]
    body = {
        "model": EMBEDDER,
        "input": [5, 6, 7, 8],
        "dimensions": 3,
        "truncate_prompt_tokens": 3,
        "priority": -1,
        "encoding_format": "base64",
    }
    reply = client.post("/pooling", json=body)
    assert reply.status_code == 200, reply.text
    packed = base64.b64decode(reply.json()["data"][0]["data"])
    assert list(struct.unpack("<3f", packed)) == fake_embedding_values([6, 7, 8], {"dimensions": 3})
    sent = embedder.received[-1]
    assert (sent.prompt_token_ids, sent.priority) == ([6, 7, 8], -1)
    assert sent.pooling["dimensions"] == 3
    # For embeddings vLLM's use_activation is normalization; `normalize` says it directly.
    for flags, sent in (
        ({"use_activation": False}, False),
        ({"normalize": True, "use_activation": False}, True),
        ({}, None),
    ):
        assert client.post("/pooling", json={"model": EMBEDDER, "input": "x", **flags}).is_success
        assert embedder.received[-1].pooling["normalize"] is sent, flags
        assert embedder.received[-1].pooling.get("task") != "classify"


def test_a_classifier_pools_to_its_label_probabilities(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker]
) -> None:
    sentiment = pooling_workers[0]
    texts = ["I loved it", "Terrible, never again."]
    reply = client.post("/pooling", json={"model": SENTIMENT, "input": texts})
    assert reply.status_code == 200, reply.text
    prompts = [sentiment.tokenizer.encode(t) for t in texts]
    assert [d["data"] for d in reply.json()["data"]] == [
        pytest.approx(fake_label_probs(ids, 3)) for ids in prompts
    ]
    assert sentiment.received[-1].pooling["task"] == "classify"
    # A reward model's score is its logit: use_activation false, as in vLLM.
    raw = client.post(
        "/pooling",
        json={"model": SENTIMENT, "input": texts[0], "task": "classify", "use_activation": False},
    )
    assert raw.status_code == 200, raw.text
    logits = [math.log(p) for p in fake_label_probs(prompts[0], 3)]
    assert raw.json()["data"][0]["data"] == pytest.approx(logits)
    assert sentiment.received[-1].pooling["activation"] is False


def test_a_conversation_pools_as_its_chat_template_renders_it(
    client: httpx.Client, pooling_workers: tuple[FakeWorker, FakeWorker]
) -> None:
    embedder = pooling_workers[1]
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    reply = client.post("/pooling", json={"model": EMBEDDER, "messages": messages})
    assert reply.status_code == 200, reply.text
    tokenizer = embedder.tokenizer
    text = tokenizer.render_chat(messages, add_generation_prompt=False)
    assert embedder.received[-1].prompt_token_ids == tokenizer.encode(
        text, add_special_tokens=False
    )
    assert len(reply.json()["data"]) == 1


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        (EMBEDDER, {"task": "token_embed"}, "task"),
        (EMBEDDER, {"task": "classify"}, "model"),
        (SENTIMENT, {"task": "embed"}, "model"),
        (SENTIMENT, {"dimensions": 2}, "dimensions"),
        (SENTIMENT, {"normalize": True}, "normalize"),
        (EMBEDDER, {"dimensions": 0}, "dimensions"),
        (EMBEDDER, {"dimensions": 2}, "dimensions"),  # not one it was trained for
        (EMBEDDER, {"input": []}, "input"),
        ("fake-model", {}, "model"),  # a generative model: no pooling runner
    ],
)
def test_what_the_model_cannot_do_is_a_400_before_queueing(
    client: httpx.Client,
    pooling_workers: tuple[FakeWorker, FakeWorker],
    model: str,
    extra: dict[str, object],
    param: str,
) -> None:
    received = [len(w.received) for w in pooling_workers]
    reply = client.post("/pooling", json={"model": model, "input": "some text", **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert [len(w.received) for w in pooling_workers] == received
