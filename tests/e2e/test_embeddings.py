"""Embeddings on the real `conveyor serve --runner pooling` tree, through the official SDK:
direct calls and a batch give the in-process engine's vectors, and a project key's
embedding tokens show up in the embeddings usage report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from engine.llm import LLM

from .batch_calls import jsonl, submit, wait_until
from .conftest import serving

MODEL = "smollm2"
ADMIN_KEY = "e2e-embeddings-admin"
TEXTS = [
    "The capital of France is Paris.",
    "A quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
]
# fp32 on both sides; batches of other shapes change only the summation order.
ATOL = 1e-5


@pytest.fixture(scope="module")
def embed_server(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with serving(
        bundled_model_dir,
        CONVEYOR_RUNNER="pooling",
        CONVEYOR_ADMIN_KEY=ADMIN_KEY,
        CONVEYOR_LOG_FLUSH_INTERVAL="0.2",
        CONVEYOR_BATCH_SWEEP_INTERVAL="1",
        CONVEYOR_DATA_DIR=str(tmp_path_factory.mktemp("embed-data")),
    ) as (base_url, _):
        yield base_url


@pytest.fixture(scope="module")
def expected(bundled_model_dir: Path) -> list[torch.Tensor]:
    llm = LLM(
        str(bundled_model_dir), runner="pooling", max_model_len=2048, kv_cache_memory=256 << 20
    )
    return [r.embedding for r in llm.embed(TEXTS)]  # type: ignore[misc]


@pytest.fixture(scope="module")
def tenant(embed_server: str) -> tuple[httpx.Client, dict[str, Any]]:
    admin = httpx.Client(
        base_url=embed_server, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    project = admin.post("/v1/organization/projects", json={"name": "search"}).json()
    key = admin.post(
        f"/v1/organization/projects/{project['id']}/api_keys", json={"name": "indexer"}
    ).json()
    return admin, key


def test_direct_and_batched_embeddings_are_the_engines_and_are_billed(
    embed_server: str, expected: list[torch.Tensor], tenant: tuple[httpx.Client, dict[str, Any]]
) -> None:
    admin, key = tenant
    start = int(time.time())
    client = openai.OpenAI(
        base_url=f"{embed_server}/v1", api_key=key["value"], max_retries=0, timeout=120
    )
    # The SDK asks for base64 by default; "float" is the JSON list.
    for fmt in (openai.NOT_GIVEN, "float"):
        result = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format=fmt)
        assert result.model == MODEL and [d.index for d in result.data] == [0, 1, 2]
        for data, want in zip(result.data, expected, strict=True):
            torch.testing.assert_close(torch.tensor(data.embedding), want, atol=ATOL, rtol=0)
    direct_tokens = 2 * result.usage.prompt_tokens

    with pytest.raises(openai.BadRequestError, match="embeds or classifies prompts"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    lines = [
        {
            "custom_id": f"doc-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": text, "encoding_format": "float"},
        }
        for i, text in enumerate(TEXTS)
    ]
    batch = wait_until(client, submit(client, lines, "/v1/embeddings").id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == len(TEXTS)
    output = jsonl(client, batch.output_file_id)
    by_id = {row["custom_id"]: row["response"] for row in output}
    batch_tokens = 0
    for i, want in enumerate(expected):
        response = by_id[f"doc-{i}"]
        assert response["status_code"] == 200
        (data,) = response["body"]["data"]
        torch.testing.assert_close(torch.tensor(data["embedding"]), want, atol=ATOL, rtol=0)
        batch_tokens += response["body"]["usage"]["prompt_tokens"]

    def billed() -> dict[bool, tuple[int, int]]:
        """(tokens, requests) for the key, by whether a batch made them."""
        page = admin.get(
            "/v1/organization/usage/embeddings",
            params={"start_time": start - 60, "group_by": "api_key_id,batch"},
        ).json()
        mine = [r for b in page["data"] for r in b["results"] if r["api_key_id"] == key["id"]]
        sums = {False: (0, 0), True: (0, 0)}
        for r in mine:  # summed: the query may span two daily buckets
            tokens, requests = sums[r["batch"]]
            sums[r["batch"]] = (tokens + r["input_tokens"], requests + r["num_model_requests"])
        return sums

    want = {False: (direct_tokens, 2), True: (batch_tokens, len(TEXTS))}
    deadline = time.monotonic() + 10
    while billed() != want:
        assert time.monotonic() < deadline, f"billed {billed()}, expected {want}"
        time.sleep(0.2)


def test_rerank_scores_are_the_cosines_of_the_engines_vectors(
    embed_server: str, expected: list[torch.Tensor], tenant: tuple[httpx.Client, dict[str, Any]]
) -> None:
    _, key = tenant
    reply = httpx.post(
        f"{embed_server}/v1/rerank",
        headers={"Authorization": f"Bearer {key['value']}"},
        json={"model": MODEL, "query": TEXTS[0], "documents": TEXTS[1:]},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    cosines = {i: float(expected[0] @ expected[i + 1]) for i in range(len(TEXTS) - 1)}
    assert [r["index"] for r in results] == sorted(cosines, key=lambda i: -cosines[i])
    for result in results:
        assert result["relevance_score"] == pytest.approx(cosines[result["index"]], abs=1e-5)


def test_pooling_gives_the_engines_vectors_billed_as_embeddings(
    embed_server: str, expected: list[torch.Tensor], tenant: tuple[httpx.Client, dict[str, Any]]
) -> None:
    """vLLM's generic /pooling answers an embedding model with its embeddings, and its
    tokens are embedding work in the usage report."""
    admin, _ = tenant
    start = int(time.time())
    project = admin.post("/v1/organization/projects", json={"name": "pooling"}).json()
    key = admin.post(
        f"/v1/organization/projects/{project['id']}/api_keys", json={"name": "pooler"}
    ).json()
    reply = httpx.post(
        f"{embed_server}/pooling",
        headers={"Authorization": f"Bearer {key['value']}"},
        json={"model": MODEL, "input": TEXTS},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [d["object"] for d in body["data"]] == ["pooling"] * len(TEXTS)
    for data, want in zip(body["data"], expected, strict=True):
        torch.testing.assert_close(torch.tensor(data["data"]), want, atol=ATOL, rtol=0)
    tokens = body["usage"]["prompt_tokens"]
    assert tokens > len(TEXTS)

    def billed() -> int:
        page = admin.get(
            "/v1/organization/usage/embeddings",
            params={"start_time": start - 60, "group_by": "api_key_id"},
        ).json()
        return sum(
            r["input_tokens"]
            for b in page["data"]
            for r in b["results"]
            if r["api_key_id"] == key["id"]
        )

    deadline = time.monotonic() + 10
    while billed() != tokens:
        assert time.monotonic() < deadline, f"billed {billed()}, expected {tokens}"
        time.sleep(0.2)
