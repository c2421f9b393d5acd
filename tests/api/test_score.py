"""vLLM's /score and /rerank against a scripted embedding worker: pairing, each text embedded
once, scores as dot products of the (unit) vectors, rerank order and top_n, and refusals."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import MODEL, Stack, worker_on
from .fakes import FakeWorker, fake_embedding_values

EMBEDDER = "fake-scorer"


@pytest.fixture(scope="module")
def scorer(stack: Stack) -> Iterator[FakeWorker]:
    with worker_on(stack, EMBEDDER, instance="scorer-1", runner="pooling") as worker:
        yield worker


@pytest.fixture()
def score_worker(scorer: FakeWorker) -> FakeWorker:
    scorer.behaviour = "normal"
    scorer.received.clear()
    return scorer


def expected_score(worker: FakeWorker, a: str, b: str) -> float:
    """The fake's vectors are facts of the tokens; the route takes them as unit vectors."""
    va = fake_embedding_values(worker.tokenizer.encode(a), None)
    vb = fake_embedding_values(worker.tokenizer.encode(b), None)
    return sum(x * y for x, y in zip(va, vb, strict=True))


def test_score_pairs_one_text_with_each_and_embeds_each_text_once(
    client: httpx.Client, score_worker: FakeWorker
) -> None:
    paris = "Paris is the capital of France."
    docs = [paris, "Bananas are yellow.", paris]
    for path in ("/score", "/v1/score"):
        score_worker.received.clear()
        reply = client.post(path, json={"model": EMBEDDER, "text_1": "capital", "text_2": docs})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "list" and body["model"] == EMBEDDER
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        for data, doc in zip(body["data"], docs, strict=True):
            assert data["object"] == "score"
            assert data["score"] == pytest.approx(expected_score(score_worker, "capital", doc))
        # "capital" once, each distinct document once; all asked for unit vectors.
        assert len(score_worker.received) == 3
        unit = {"dimensions": None, "normalize": True}
        assert all(r.pooling == unit for r in score_worker.received)
        assert body["usage"]["prompt_tokens"] == sum(
            len(r.prompt_token_ids) for r in score_worker.received
        )
    pairwise = client.post(
        "/score", json={"model": EMBEDDER, "text_1": ["a b", "c"], "text_2": ["d", "e f g"]}
    )
    assert [d["score"] for d in pairwise.json()["data"]] == pytest.approx(
        [expected_score(score_worker, "a b", "d"), expected_score(score_worker, "c", "e f g")]
    )


def test_rerank_orders_documents_and_keeps_the_top_n(
    client: httpx.Client, score_worker: FakeWorker
) -> None:
    query = "Which city is the capital?"
    docs = ["x", "A much longer document about capitals and cities.", "Some words here."]
    scores = [expected_score(score_worker, query, d) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        reply = client.post(
            path, json={"model": EMBEDDER, "query": query, "documents": docs, "top_n": 2}
        )
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert [r["index"] for r in results] == order[:2]
        assert [r["relevance_score"] for r in results] == pytest.approx(
            [scores[i] for i in order[:2]]
        )
        assert [r["document"]["text"] for r in results] == [docs[i] for i in order[:2]]
        assert reply.json()["usage"]["total_tokens"] > 0
    # Cohere's document objects, and no documents echoed back when asked.
    bare = client.post(
        "/v1/rerank",
        json={
            "model": EMBEDDER,
            "query": query,
            "documents": [{"text": d} for d in docs],
            "return_documents": False,
        },
    )
    assert [r["index"] for r in bare.json()["results"]] == order
    assert all("document" not in r for r in bare.json()["results"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_1"),
        ("/score", {"text_1": [], "text_2": "c"}, "text_1"),
        ("/rerank", {"query": "q", "documents": []}, "documents"),
        ("/rerank", {"query": "q", "documents": [{"title": "no text"}]}, "documents[0]"),
        ("/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ("/rerank", {"query": "q"}, "documents"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    client: httpx.Client, score_worker: FakeWorker, path: str, body: dict, param: str
) -> None:
    reply = client.post(path, json={"model": EMBEDDER, **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert not score_worker.received


def test_a_text_model_cannot_score(client: httpx.Client, score_worker: FakeWorker) -> None:
    reply = client.post("/score", json={"model": MODEL, "text_1": "a", "text_2": "b"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "model_not_supported"
