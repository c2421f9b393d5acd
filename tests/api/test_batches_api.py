"""`/v1/batches` through a real uvicorn and the official `openai` SDK: creation, reading,
listing and cancelling, validation and project scoping, on SQLite and PostgreSQL.

No batch worker runs here (the runner has its own tests, and tests/e2e runs the
whole thing), so batches stay where the API leaves them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import Stack
from .test_tenancy import ADMIN_KEY, new_key, new_project

LINE = {
    "custom_id": "r1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture()
def tenants(
    make_stack: Callable[..., Stack], migrated_database_url: str, tmp_path: Path
) -> tuple[Stack, openai.OpenAI, openai.OpenAI]:
    stack = make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        data_dir=tmp_path,
        with_worker=False,
    )
    with stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        first = new_key(admin, new_project(admin, "acme")["id"])["value"]
        second = new_key(admin, new_project(admin, "globex")["id"])["value"]
    return stack, sdk(stack, first), sdk(stack, second)


def sdk(stack: Stack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=secret, max_retries=0, timeout=10)


def create(client: openai.OpenAI, **overrides: Any) -> Any:
    uploaded = client.files.create(file=("in.jsonl", json.dumps(LINE).encode()), purpose="batch")
    params: dict[str, Any] = {
        "input_file_id": uploaded.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **overrides,
    }
    return client.batches.create(**params)


def test_create_retrieve_list_cancel(tenants: tuple[Stack, openai.OpenAI, openai.OpenAI]) -> None:
    _, client, _ = tenants
    batch = create(client, metadata={"team": "search"})
    assert batch.id.startswith("batch_") and batch.object == "batch"
    assert (batch.status, batch.endpoint, batch.completion_window) == (
        "validating",
        "/v1/chat/completions",
        "24h",
    )
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.metadata == {"team": "search"}
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert client.batches.retrieve(batch.id) == batch

    newer = create(client)
    # Newest first; within one second (the timestamps' unit) the order is by id, still a
    # total order, so pages never skip or repeat.
    first_page = client.batches.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more
    rest = client.batches.list(after=first_page.data[0].id)
    assert {first_page.data[0].id, *(b.id for b in rest)} == {batch.id, newer.id}
    assert not rest.has_more

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert client.batches.cancel(batch.id).status == "cancelling"  # idempotent


def test_another_projects_batch_is_404(tenants: tuple[Stack, openai.OpenAI, openai.OpenAI]) -> None:
    _, acme, globex = tenants
    batch = create(acme)
    for call in (globex.batches.retrieve, globex.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            call(batch.id)
    assert [b.id for b in globex.batches.list()] == []
    # Nor can one project run a batch over another project's file.
    theirs = acme.files.create(file=("in.jsonl", json.dumps(LINE).encode()), purpose="batch")
    with pytest.raises(openai.NotFoundError) as missing:
        globex.batches.create(
            input_file_id=theirs.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert missing.value.body["param"] == "input_file_id"  # type: ignore[index]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        (
            {"output_expires_after": {"anchor": "created_at", "seconds": 60}},
            "output_expires_after.seconds",
        ),
        (
            {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
            "output_expires_after.anchor",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_param(
    tenants: tuple[Stack, openai.OpenAI, openai.OpenAI], overrides: dict[str, Any], param: str
) -> None:
    _, client, _ = tenants
    with pytest.raises(openai.BadRequestError) as bad:
        create(client, **overrides)
    assert bad.value.body["param"] == param  # type: ignore[index]


def test_input_file_must_be_a_batch_file(
    tenants: tuple[Stack, openai.OpenAI, openai.OpenAI],
) -> None:
    stack, client, _ = tenants
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(
            input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "purpose" in bad.value.message
    with httpx.Client(base_url=stack.url) as anonymous:
        assert anonymous.get("/v1/batches").status_code == 401
