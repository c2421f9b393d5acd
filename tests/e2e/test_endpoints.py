"""The rest of the surface against the real server: ops endpoints, tokenize, auth, two models."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conveyor.embedded_redis import free_port

from .conftest import STARTUP_TIMEOUT, Server, stop, wait_healthy

CLI = [sys.executable, "-m", "conveyor.cli"]


def test_ops_endpoints(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    assert "version" in httpx.get(f"{server.base_url}/version").json()
    sdk = openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0)
    sdk.completions.create(model="smollm2", prompt="Hello", max_tokens=3, temperature=0)
    deadline = time.monotonic() + 10
    text = ""
    while "vllm:generation_tokens_total" not in text and time.monotonic() < deadline:
        text = httpx.get(f"{server.base_url}/metrics").text
        time.sleep(0.3)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "conveyor:queue_length",
    ):
        assert name in text, name
    assert 'model_name="smollm2"' in text


def test_tokenize_round_trip(server: Server) -> None:
    text = "Hello, wörld! 世界"
    tokens = httpx.post(
        f"{server.base_url}/tokenize", json={"model": "smollm2", "prompt": text}
    ).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    back = httpx.post(
        f"{server.base_url}/detokenize", json={"model": "smollm2", "tokens": tokens["tokens"]}
    ).json()
    assert back["prompt"] == text


@pytest.fixture()
def keyed_api(server: Server) -> Iterator[str]:
    """A second API replica on the same Redis, this one requiring a key."""
    port = free_port()
    env = {**server.env, "CONVEYOR_API_KEY": "sk-e2e-secret"}
    process = subprocess.Popen([*CLI, "api", "--port", str(port), "--host", "127.0.0.1"], env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process, STARTUP_TIMEOUT)
        yield base_url
    finally:
        stop(process)


def test_api_key_is_enforced_on_every_replica_path(keyed_api: str, server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_api}/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=f"{keyed_api}/v1", api_key="sk-e2e-secret", max_retries=0)
    (card,) = good.models.list().data
    assert card.id == "smollm2"
    # The model as the worker was given it, as vLLM's `root` is (CONVEYOR_MODEL here).
    assert card.model_extra is not None and card.model_extra["root"] == server.env["CONVEYOR_MODEL"]
    for path in ("//v1/models", "/v1/../v1/models", "/v1%2Fmodels"):
        assert httpx.get(f"{keyed_api}{path}").status_code in (401, 404)
    assert httpx.get(f"{keyed_api}/health").status_code == 200


@pytest.fixture()
def second_model(server: Server, make_random_model: Callable[[str], Path]) -> Iterator[str]:
    """A tiny random Llama served by its own worker on the same Redis."""
    folder = make_random_model("llama")
    env = {
        **server.env,
        "CONVEYOR_MODEL": str(folder),
        "CONVEYOR_SERVED_MODEL_NAME": "tiny",
        "CONVEYOR_MAX_MODEL_LEN": "512",
    }
    process = subprocess.Popen([*CLI, "worker"], env=env)
    try:
        yield "tiny"
    finally:
        stop(process)


def test_two_models_through_two_workers(server: Server, second_model: str) -> None:
    sdk = openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=60)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while second_model not in {m.id for m in sdk.models.list().data}:
        assert time.monotonic() < deadline, "the second worker never announced its model"
        time.sleep(0.3)
    assert {m.id for m in sdk.models.list().data} == {"smollm2", second_model}
    for model in ("smollm2", second_model):
        out = sdk.completions.create(model=model, prompt="Hi there", max_tokens=5, temperature=0)
        assert out.model == model and out.usage.completion_tokens >= 1
