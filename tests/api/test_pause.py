"""vLLM's /pause, /resume and /is_paused over HTTP: mounted only in development mode, only
for the admin key under tenancy, and bad arguments refused before any change. Their
effect on real workers is in tests/e2e/test_pause.py and tests/workers/test_pause.py."""

from __future__ import annotations

from collections.abc import Callable

import redis

from conveyor.pause_request import PauseRequest

from .conftest import MODEL, Stack

ADMIN_KEY = "admin-test-key"


def test_the_endpoints_are_development_endpoints_as_in_vllm(stack: Stack) -> None:
    with stack.client() as http:
        assert http.post("/pause").status_code == 404
        assert http.post("/resume").status_code == 404
        assert http.get("/is_paused").status_code == 404


def test_under_tenancy_only_the_admin_key_may_call_them(
    make_stack: Callable[..., Stack], migrated_database_url: str
) -> None:
    stack = make_stack(
        database_url=migrated_database_url, admin_key=ADMIN_KEY, server_dev_mode=True
    )
    with (
        stack.client() as anonymous,
        stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin,
    ):
        assert anonymous.post("/pause").status_code == 401
        assert anonymous.post("/resume").status_code == 401
        assert anonymous.get("/is_paused").status_code == 401
        bad = admin.post("/pause", params={"mode": "freeze"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "mode"
        assert admin.get("/is_paused").json() == {"is_paused": False}


def test_a_pause_outlives_its_workers_and_a_resume_still_lifts_it(
    make_stack: Callable[..., Stack],
) -> None:
    """With no worker live (an RL loop restarting them), /is_paused still reads the pause
    the next worker will join, and /resume lifts it without waiting for anyone."""
    stack = make_stack(with_worker=False, server_dev_mode=True)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    names = stack.names
    client.set(names.known_model(MODEL), "1")
    client.set(names.pause(MODEL), PauseRequest(True, "e:1", mode="keep").encode())
    with stack.client() as http:
        assert http.get("/is_paused").json() == {"is_paused": True}
        assert http.get("/is_paused", params={"model": MODEL}).json() == {"is_paused": True}
        assert http.post("/pause").status_code == 503  # nothing live to pause
        assert http.post("/resume").json() == {"status": "resumed"}
        asked = PauseRequest.decode(client.get(names.pause(MODEL)))
        assert asked is not None and not asked.paused and asked.gen == "e:2"
        assert http.get("/is_paused").json() == {"is_paused": False}
        assert http.post("/resume", params={"model": "nope"}).status_code == 404
    client.close()
