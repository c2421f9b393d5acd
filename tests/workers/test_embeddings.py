"""A worker of an embedding model: it announces the pooling runner, answers each
embedding request with the engine's own vector, and refuses what it cannot do."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.pooling_params import PoolingParams

from .conftest import Harness

PROMPTS = [[5, 77, 300, 12, 9, 8], [40, 41], list(range(100, 160))]


@pytest.fixture(scope="module")
def engine(make_random_model: Callable[[str], Path]) -> LLMEngine:
    """Overrides the package's engine: a tiny Llama on the pooling runner."""
    config = EngineConfig(
        model=str(make_random_model("llama")),
        served_model_name="tiny-embed",
        kv_cache_memory=16 << 20,
        max_num_batched_tokens=32,  # the long prompt is prefilled in two steps
        runner="pooling",
        pooler_config={"pooling_type": "MEAN"},
    )
    return LLMEngine(config)


def reference(engine: LLMEngine, prompt: list[int], params: PoolingParams) -> torch.Tensor:
    """The engine's own vector, computed before any worker holds it."""
    engine.add_request("ref", prompt, params)
    vector = None
    while engine.has_unfinished():
        for out in engine.step():
            vector = out.embedding if out.embedding is not None else vector
    assert vector is not None
    return vector


def decoded(message_embedding: str | None) -> torch.Tensor:
    assert message_embedding is not None
    raw = base64.b64decode(message_embedding)
    return torch.frombuffer(bytearray(raw), dtype=torch.float32)


def test_embedding_requests_get_the_engines_vectors(
    engine: LLMEngine, make_worker: Any, client: redis.Redis
) -> None:
    want = [reference(engine, p, PoolingParams()) for p in PROMPTS]
    raw = reference(engine, PROMPTS[0], PoolingParams(normalize=False))
    h: Harness = make_worker()
    beat = json.loads(client.get(h.names.worker(h.model, h.worker.instance)))
    assert beat["runner"] == "pooling"

    requests = [
        dataclasses.replace(h.request(p, stream=False), sampling={}, pooling={}) for p in PROMPTS
    ]
    unnormalised = dataclasses.replace(
        h.request(PROMPTS[0], stream=False), sampling={}, pooling={"normalize": False}
    )
    replies = h.collect([h.send(r) for r in [*requests, unnormalised]])
    for request, expected in zip(requests, want, strict=True):
        (message,) = replies[request.id]
        assert message.finished and message.error is None
        torch.testing.assert_close(decoded(message.embedding), expected, atol=1e-6, rtol=0)
        assert message.usage is not None
        assert (message.usage.prompt_tokens, message.usage.completion_tokens) == (
            len(request.prompt_token_ids),
            0,
        )
        # The stored result carries the vector too (an API that missed the message reads it).
        stored = client.get(h.names.result(request.id))
        assert stored is not None and json.loads(stored)["embedding"] == message.embedding
    (message,) = replies[unnormalised.id]
    torch.testing.assert_close(decoded(message.embedding), raw, atol=1e-6, rtol=0)
    assert abs(float(raw.norm()) - 1.0) > 1e-3
    assert h.pending() == 0


def test_what_an_embedding_worker_cannot_do_is_a_400(make_worker: Any) -> None:
    h: Harness = make_worker()
    generate = h.request(PROMPTS[0])
    shortened = dataclasses.replace(
        h.request(PROMPTS[0], stream=False), sampling={}, pooling={"dimensions": 8}
    )
    unknown = dataclasses.replace(
        h.request(PROMPTS[0], stream=False), sampling={}, pooling={"softmax": True}
    )
    replies = h.collect([h.send(r) for r in (generate, shortened, unknown)])
    expected = {
        generate.id: ("model", "embedding model"),
        shortened.id: ("dimensions", "matryoshka"),
        unknown.id: ("softmax", "not a supported embedding parameter"),
    }
    for request_id, (param, text) in expected.items():
        (message,) = replies[request_id]
        assert message.error is not None, request_id
        assert (message.error.status, message.error.param) == (400, param)
        assert text in message.error.message
    assert h.pending() == 0
