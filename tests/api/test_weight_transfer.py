"""vLLM's weight-transfer endpoints over HTTP: development endpoints, answering only with
the disk backend configured, checking their bodies before any change, and keeping the
trainer's weight version. Reading a folder into real workers is in
tests/e2e/test_weight_transfer.py and tests/workers/test_weight_update.py."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Stack

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
