"""vLLM's runtime LoRA endpoints against scripted workers: a 200 means every worker
announces the change, a worker's failure is the call's answer, start-up adapters stay."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .conftest import MODEL, Stack, sdk_client, worker_on
from .fakes import FakeWorker

LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@pytest.fixture()
def runtime_stack(make_stack: Callable[..., Stack]) -> Iterator[tuple[Stack, FakeWorker]]:
    """An API with runtime updates on and a worker with one start-up adapter (sql)."""
    stack = make_stack(with_worker=False, allow_runtime_lora_updating=True)
    with worker_on(stack, loras={"sql": "/adapters/sql"}) as worker:
        yield stack, worker


def test_an_adapter_loads_serves_and_unloads(runtime_stack) -> None:
    stack, worker = runtime_stack
    with stack.client(timeout=30) as http, sdk_client(stack) as sdk:
        loaded = http.post(LOAD, json={"lora_name": "poet", "lora_path": "/adapters/poet"})
        assert loaded.status_code == 200, loaded.text
        assert loaded.text == "Success: LoRA adapter 'poet' added successfully."
        # A 200 means it is routed now: listed, and requests reach the worker naming it.
        card = sdk.models.retrieve("poet").model_dump()
        assert (card["parent"], card["root"]) == (MODEL, "/adapters/poet")
        sdk.completions.create(model="poet", prompt="Roses", max_tokens=2)
        assert worker.received[-1].lora == "poet"

        again = http.post(LOAD, json={"lora_name": "poet", "lora_path": "/adapters/poet2"})
        assert (again.status_code, again.json()["error"]["code"]) == (400, "lora_adapter_exists")
        body = {"lora_name": "poet", "lora_path": "/adapters/poet2", "load_inplace": True}
        assert http.post(LOAD, json=body).status_code == 200
        assert sdk.models.retrieve("poet").model_dump()["root"] == "/adapters/poet2"

        unloaded = http.post(UNLOAD, json={"lora_name": "poet"})
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.text == "Success: LoRA adapter 'poet' removed successfully."
        assert {m.id for m in sdk.models.list()} == {MODEL, "sql"}
        gone = http.post("/v1/completions", json={"model": "poet", "prompt": "x"})
        assert gone.status_code == 404  # unloaded, not "no worker right now"
        assert http.post(UNLOAD, json={"lora_name": "poet"}).status_code == 404


def test_a_worker_that_cannot_load_answers_the_call(runtime_stack) -> None:
    stack, _ = runtime_stack
    with stack.client(timeout=30) as http:
        failed = http.post(LOAD, json={"lora_name": "bad", "lora_path": "/elsewhere/bad"})
        assert failed.status_code == 400, failed.text
        error = failed.json()["error"]
        assert error["param"] == "lora_path"
        assert error["message"] == (
            "Failed to load LoRA adapter 'bad': no such folder (worker worker-1)"
        )
        # Withdrawn: workers stop trying, and a corrected call starts afresh.
        assert not http_redis_has(stack, "bad")
        fixed = http.post(LOAD, json={"lora_name": "bad", "lora_path": "/adapters/bad"})
        assert fixed.status_code == 200, fixed.text


def http_redis_has(stack: Stack, name: str) -> bool:
    import redis

    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        return bool(client.hexists(stack.names.runtime_loras(MODEL), name))
    finally:
        client.close()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (LOAD, {"lora_name": "sql", "lora_path": "/adapters/x"}, 400, "loaded at start-up"),
        (LOAD, {"lora_name": MODEL, "lora_path": "/adapters/x"}, 400, "name of a served model"),
        (LOAD, {"lora_name": "x", "lora_path": "/adapters/x", "model": "nope"}, 404, "nope"),
        (LOAD, {"lora_name": "x"}, 400, "lora_path"),
        (LOAD, {"lora_name": "a b", "lora_path": "/adapters/x"}, 400, "lora_name"),
        (UNLOAD, {"lora_name": "sql"}, 400, "cannot be unloaded at run time"),
        (UNLOAD, {"lora_name": "never"}, 404, "cannot be found"),
    ],
)
def test_mistakes_get_clear_errors(
    runtime_stack, path: str, body: dict, status: int, message: str
) -> None:
    stack, _ = runtime_stack
    with stack.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"] + str(response.json()["error"]["param"])


def test_a_name_another_model_uses_is_refused_as_such(runtime_stack) -> None:
    stack, _ = runtime_stack
    with (
        worker_on(stack, "other-model", instance="worker-9", loras={"haiku": "/adapters/haiku"}),
        stack.client(timeout=30) as http,
    ):
        body = {"lora_name": "haiku", "lora_path": "/adapters/h2", "model": MODEL}
        refused = http.post(LOAD, json=body)
    assert refused.status_code == 400, refused.text
    assert "already a LoRA adapter of the model `other-model`" in refused.text


def test_the_endpoints_exist_only_when_allowed(stack: Stack, worker: FakeWorker) -> None:
    with stack.client() as http:
        response = http.post(LOAD, json={"lora_name": "poet", "lora_path": "/adapters/poet"})
    assert response.status_code == 404


def test_with_tenancy_only_the_admin_may_load(make_stack: Callable[..., Stack]) -> None:
    """An adapter serves every project, so a project's own key may not load one."""
    stack = make_stack(allow_runtime_lora_updating=True, admin_key="admin-secret")
    body = {"lora_name": "poet", "lora_path": "/adapters/poet"}
    admin = {"Authorization": "Bearer admin-secret"}
    with stack.client(timeout=30) as http:
        project = http.post("/v1/organization/projects", json={"name": "p"}, headers=admin)
        key = http.post(
            f"/v1/organization/projects/{project.json()['id']}/api_keys",
            json={"name": "k"},
            headers=admin,
        ).json()["value"]
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).is_success
        assert http.post(LOAD, json=body).status_code == 401
        refused = http.post(LOAD, json=body, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401
        ok = http.post(LOAD, json=body, headers=admin)
        assert ok.status_code == 200, ok.text


def test_a_failed_reload_keeps_the_old_adapter_serving(runtime_stack) -> None:
    stack, worker = runtime_stack
    with stack.client(timeout=30) as http, sdk_client(stack) as sdk:
        assert http.post(LOAD, json={"lora_name": "poet", "lora_path": "/adapters/poet"}).is_success
        bad = {"lora_name": "poet", "lora_path": "/elsewhere/poet", "load_inplace": True}
        failed = http.post(LOAD, json=bad)
        assert failed.status_code == 400, failed.text
        assert "the adapter loaded before keeps serving" in failed.json()["error"]["message"]
        assert sdk.models.retrieve("poet").model_dump()["root"] == "/adapters/poet"
        sdk.completions.create(model="poet", prompt="Roses", max_tokens=2)
        assert worker.received[-1].lora == "poet"
        # A reload from the same folder is a change too (new weights written over it).
        same = {"lora_name": "poet", "lora_path": "/adapters/poet", "load_inplace": True}
        assert http.post(LOAD, json=same).status_code == 200
        # Loading what is already asked for (a retry after a timeout) waits for it.
        again = http.post(LOAD, json={"lora_name": "poet", "lora_path": "/adapters/poet"})
        assert again.status_code == 200, again.text
        # ... and says it read nothing (it said "added successfully", files not re-read).
        assert "already loaded from /adapters/poet; pass load_inplace: true" in again.text
