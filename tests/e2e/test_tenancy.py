"""Tenancy on the real `conveyor serve` (worker, embedded Redis, SQLite): a project key's
requests through the official SDK show up exactly in the usage API; revoking it is a 401."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import serving

ADMIN_KEY = "e2e-admin-key"


@pytest.fixture(scope="module")
def tenant_server(bundled_model_dir: Path) -> Iterator[str]:
    with serving(
        bundled_model_dir, CONVEYOR_ADMIN_KEY=ADMIN_KEY, CONVEYOR_LOG_FLUSH_INTERVAL="0.2"
    ) as (base_url, _):
        yield base_url


def test_project_key_usage_is_exact_and_revocation_is_immediate(tenant_server: str) -> None:
    admin = httpx.Client(
        base_url=tenant_server, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    project = admin.post("/v1/organization/projects", json={"name": "acme"}).json()
    key = admin.post(
        f"/v1/organization/projects/{project['id']}/api_keys", json={"name": "ci", "rpm": 100}
    ).json()
    start = int(time.time())

    client = openai.OpenAI(base_url=f"{tenant_server}/v1", api_key=key["value"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{tenant_server}/v1", api_key="nope", max_retries=0).models.list()
    plain = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        temperature=0,
    )
    chunks = list(
        client.completions.create(
            model="smollm2",
            prompt="The capital of France is",
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = chunks[-1].usage
    assert plain.usage is not None and streamed is not None
    expected_in = plain.usage.prompt_tokens + streamed.prompt_tokens
    expected_out = plain.usage.completion_tokens + streamed.completion_tokens

    def totals() -> tuple[int, int, int]:
        page = admin.get(
            "/v1/organization/usage/completions",
            params={"start_time": start - 60, "bucket_width": "1d", "group_by": "api_key_id"},
        ).json()
        mine = [r for b in page["data"] for r in b["results"] if r["api_key_id"] == key["id"]]
        return (
            sum(r["input_tokens"] for r in mine),
            sum(r["output_tokens"] for r in mine),
            sum(r["num_model_requests"] for r in mine),
        )

    deadline = time.monotonic() + 10
    while totals() != (expected_in, expected_out, 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert totals() == (expected_in, expected_out, 2)

    listed = admin.get(f"/v1/organization/projects/{project['id']}/api_keys").text
    assert key["value"] not in listed
    admin.delete(f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_one_projects_cached_prompt_is_not_anothers(tenant_server: str) -> None:
    """The engine's prefix cache is salted per project: the same prompt from another
    project is computed anew and reports no cached tokens."""
    admin = httpx.Client(
        base_url=tenant_server, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )

    def client_of(name: str) -> openai.OpenAI:
        project = admin.post("/v1/organization/projects", json={"name": name}).json()
        key = admin.post(
            f"/v1/organization/projects/{project['id']}/api_keys", json={"name": "ci"}
        ).json()
        return openai.OpenAI(base_url=f"{tenant_server}/v1", api_key=key["value"], max_retries=0)

    prompt = "Write one line about the sea. " * 6  # several full KV blocks

    def cached(client: openai.OpenAI) -> int:
        usage = client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=1, temperature=0
        ).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens_details.cached_tokens or 0

    owner, other = client_of("sea-owner"), client_of("sea-other")
    assert cached(owner) == 0
    assert cached(owner) > 0  # its own blocks are found
    assert cached(other) == 0
