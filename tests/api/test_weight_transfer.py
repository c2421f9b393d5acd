"""vLLM's weight-transfer endpoints over HTTP: development endpoints, answering only with
the disk backend configured, checking their bodies before any change, and keeping the
trainer's weight version. Reading a folder into real workers is in
tests/e2e/test_weight_transfer.py and tests/workers/test_weight_update.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from api.errors import ApiError
from api.routes.weight_transfer import _update_model, last_update_failure
from conveyor.bus import BusNames
from conveyor.weight_update_request import WeightUpdateRequest

from ..async_redis import run_with_redis
from .conftest import Stack, worker_on
from .fakes import wait_for
from .test_worker_rollout import Catalog, live

ADMIN_KEY = "admin-test-key"
DISK = '{"backend": "disk"}'


def test_they_are_development_endpoints_as_in_vllm(stack: Stack) -> None:
    with stack.client() as http:
        assert http.post("/update_weights", json={"update_info": {}}).status_code == 404
        assert http.get("/weight_info").status_code == 404


def test_without_the_disk_backend_they_say_how_to_turn_it_on(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(server_dev_mode=True)
    with stack.client() as http:
        reply = http.post("/update_weights", json={"update_info": {"path": "/ckpt"}})
        assert reply.status_code == 400
        assert "--weight-transfer-config" in reply.json()["error"]["message"]
        assert http.post("/start_weight_update").status_code == 400


def test_bodies_are_checked_and_the_weight_version_is_kept(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(server_dev_mode=True, weight_transfer_config=DISK)
    with stack.client() as http:
        assert http.post("/init_weight_transfer_engine", json={}).status_code == 400
        init = http.post("/init_weight_transfer_engine", json={"init_info": {}})
        assert init.json() == {"message": "Weight transfer initialized"}
        assert http.post("/start_weight_update").json() == {"message": "Weight update started"}
        for body, param in [
            ({}, "update_info"),
            ({"update_info": {}}, "update_info.path"),
            ({"update_info": {"path": "relative/step-2"}}, "update_info.path"),
        ]:
            reply = http.post("/update_weights", json=body)
            assert reply.status_code == 400, body
            assert reply.json()["error"]["param"] == param
        missing = http.post(
            "/update_weights", params={"model": "nope"}, json={"update_info": {"path": "/ckpt"}}
        )
        assert missing.status_code == 404
        assert http.get("/weight_info").json() == {"weight_version": None}
        finish = http.post("/finish_weight_update", json={"weight_version": "step-2"})
        assert finish.json() == {"message": "Weight update finished"}
        assert http.get("/weight_info").json() == {"weight_version": "step-2"}
        renamed = http.post("/update_weight_version", json={"new_version": "step-2b"})
        assert renamed.json() == {"success": True, "new_version": "step-2b"}
        assert http.get("/weight_info").json() == {"weight_version": "step-2b"}
        assert http.post("/update_weight_version", json={}).status_code == 400


def test_under_tenancy_only_the_admin_key_may_call_them(
    make_stack: Callable[..., Stack], migrated_database_url: str
) -> None:
    stack = make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        server_dev_mode=True,
        weight_transfer_config=DISK,
    )
    with stack.client() as anonymous:
        assert anonymous.post("/start_weight_update").status_code == 401
        assert anonymous.post("/update_weights", json={"update_info": {}}).status_code == 401
        assert anonymous.get("/weight_info").status_code == 401


def test_bodies_are_json_whatever_the_content_type_says(make_stack: Callable[..., Stack]) -> None:
    """As vLLM reads them (`await raw_request.json()`)."""
    stack = make_stack(server_dev_mode=True, weight_transfer_config=DISK)
    with stack.client() as http:
        bare = http.post("/init_weight_transfer_engine", content=b'{"init_info": {}}')
        assert bare.status_code == 200, bare.text
        for content in (b"[1, 2]", b'"step"', b"{not json"):
            reply = http.post("/update_weights", content=content)
            assert reply.status_code == 400, content
            assert "JSON object" in reply.json()["error"]["message"]


def update_with_reports(redis_url: str, *beats: dict[str, Any]) -> tuple[str | None, str]:
    """`_update_model` of /ckpt/step-3 over a key holding /ckpt/step-2 at gen ep:4, with
    workers that report `beats`: the key after it, and the call's error ("" for none)."""
    names = BusNames(f"wt-{uuid.uuid4().hex[:8]}")
    catalog = Catalog(live(*beats, name="m"))

    async def body(redis: Any) -> tuple[str | None, str]:
        await redis.set(names.weights("m"), WeightUpdateRequest("/ckpt/step-2", "ep:4").encode())
        try:
            await _update_model(catalog, redis, names, "m", "/ckpt/step-3")  # type: ignore[arg-type]
            error = ""
        except ApiError as exc:
            error = exc.message
        return await redis.get(names.weights("m")), error

    return run_with_redis(redis_url, body)


def test_an_update_that_no_worker_could_read_is_put_back_under_its_own_gen(
    redis_url: str,
) -> None:
    ok = {"instance": "a", "weights": {"gen": "ep:5", "error": None}}
    failed = {"instance": "b", "weights": {"gen": "ep:5", "error": "no safetensors"}}
    key, error = update_with_reports(redis_url, ok, dict(ok, instance="c"))
    assert error == "" and WeightUpdateRequest.decode(key) == WeightUpdateRequest(
        "/ckpt/step-3", "ep:5"
    )
    # None could: the old folder again, for workers started later, under the failed gen
    # (the next call's gen is newer than every worker's).
    key, error = update_with_reports(redis_url, failed)
    assert "no safetensors" in error and "served before" in error
    assert WeightUpdateRequest.decode(key) == WeightUpdateRequest("/ckpt/step-2", "ep:5")
    # Some could: they serve it, and so will later workers; the others are named.
    key, error = update_with_reports(redis_url, ok, failed)
    assert "1 of 2 workers" in error and "(b)" in error
    assert WeightUpdateRequest.decode(key) == WeightUpdateRequest("/ckpt/step-3", "ep:5")
    # Every worker that was reading it is gone (killed for memory): not a success.
    key, error = update_with_reports(redis_url)
    assert "gone" in error
    assert WeightUpdateRequest.decode(key) == WeightUpdateRequest("/ckpt/step-2", "ep:5")


def test_the_latest_update_failing_on_a_live_worker_is_found(redis_url: str) -> None:
    """What /finish_weight_update refuses to record a version over."""
    names = BusNames(f"wt-{uuid.uuid4().hex[:8]}")

    def failure(*beats: dict[str, Any]) -> str | None:
        async def body(redis: Any) -> str | None:
            await redis.set(names.weights("m"), WeightUpdateRequest("/ckpt/a", "ep:2").encode())
            catalog = Catalog(live(*beats, name="m"))
            return await last_update_failure(catalog, redis, names, "m")  # type: ignore[arg-type]

        return run_with_redis(redis_url, body)

    ok = {"instance": "a", "weights": {"gen": "ep:2", "error": None}}
    assert failure(ok) is None
    assert failure(ok, {"instance": "b", "weights": {"gen": "ep:2", "error": "boom"}}) == "boom"
    # An older update's error does not count against the latest one.
    assert failure({"instance": "b", "weights": {"gen": "ep:1", "error": "old"}}) is None


def test_the_world_size_counts_the_workers_as_data_parallel_ranks(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(server_dev_mode=True)
    with stack.client() as http:
        assert http.get("/get_world_size").json() == {"world_size": 1}
        with worker_on(stack, instance="second"):
            wait_for(lambda: http.get("/get_world_size").json() == {"world_size": 2})
            answer = http.get("/get_world_size", params={"include_dp": "false"})
            assert answer.json() == {"world_size": 1}
        assert http.get("/get_world_size", params={"model": "nope"}).status_code == 404
