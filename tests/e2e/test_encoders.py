"""A BERT cross-encoder on the real `conveyor serve` tree: /rerank and /score read each
pair as its tokenizer encodes it, the second text's token types included (they travel
to the worker as where it starts), and score what the in-process engine scores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.llm import LLM
from engine.pooling_params import PoolingParams

from ..encoder_models import make_encoder
from .conftest import serving

QUERY = "what is the capital of france"
DOCS = ["paris is the capital of france", "rain and sun today", "berlin is in germany"]


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bert-reranker")
    make_encoder(folder, "BertForSequenceClassification", num_labels=1)
    return folder


@pytest.fixture(scope="module")
def reranker_server(reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(
        reranker_dir,
        CONVEYOR_SERVED_MODEL_NAME="bert-reranker",
        CONVEYOR_MAX_MODEL_LEN="64",
        CONVEYOR_KV_CACHE_MEMORY=str(16 << 20),
        CONVEYOR_DATA_DIR=str(tmp_path_factory.mktemp("reranker-data")),
    ) as (base_url, _):
        yield base_url


def test_rerank_scores_are_the_engines_pair_scores(
    reranker_server: str, reranker_dir: Path
) -> None:
    llm = LLM(str(reranker_dir), num_kv_blocks=64)
    tokenizer = llm.tokenizer.hf_tokenizer
    expected = []
    for doc in DOCS:
        encoded = tokenizer(QUERY, doc, return_token_type_ids=True)
        params = PoolingParams(segment_start=encoded["token_type_ids"].index(1))
        (result,) = llm.embed([encoded["input_ids"]], params)
        expected.append(float(result.embedding[0]))
    with httpx.Client(base_url=reranker_server, timeout=60) as client:
        reply = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        order = sorted(range(len(DOCS)), key=lambda i: -expected[i])
        assert [r["index"] for r in results] == order
        for r in results:
            assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-5)
            assert r["document"]["text"] == DOCS[r["index"]]
        scored = client.post("/score", json={"text_1": QUERY, "text_2": DOCS[0]})
        assert scored.status_code == 200, scored.text
        assert scored.json()["data"][0]["score"] == pytest.approx(expected[0], abs=1e-5)
        # One text through /classify: marked as one segment, scored as the engine does.
        (alone,) = llm.embed([tokenizer("paris")["input_ids"]])
        classified = client.post("/classify", json={"input": "paris"})
        assert classified.status_code == 200, classified.text
        probs = classified.json()["data"][0]["probs"]
        assert probs == pytest.approx(alone.embedding.tolist(), abs=1e-5)
        # vLLM's /pooling: the same for a classifier, and its logit without activation.
        pooled = client.post("/pooling", json={"input": ["paris"]})
        assert pooled.status_code == 200, pooled.text
        assert pooled.json()["data"][0]["data"] == pytest.approx(probs, abs=1e-6)
        (logit,) = llm.embed([tokenizer("paris")["input_ids"]], PoolingParams(activation=False))
        raw = client.post("/pooling", json={"input": "paris", "use_activation": False})
        assert raw.status_code == 200, raw.text
        assert raw.json()["data"][0]["data"] == pytest.approx(logit.embedding.tolist(), abs=1e-5)
        assert logit.embedding.tolist() != pytest.approx(probs, abs=1e-3)
        # A cross-encoder is no embedding model: a 400 naming what it serves.
        refused = client.post("/v1/embeddings", json={"input": "paris"})
        assert refused.status_code == 400 and "/classify" in refused.json()["error"]["message"]
