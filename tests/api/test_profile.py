"""vLLM's /start_profile and /stop_profile over HTTP: served only with --profiler-config
(as vLLM serves them only with a profiler configured), for the admin key under tenancy.
Recording on real workers is in tests/workers/test_profiler.py and
tests/e2e/test_profile.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from api.errors import ApiError
from api.routes.profile import _settled
from conveyor.profile_request import ProfileRequest

from .conftest import MODEL, Stack

ADMIN_KEY = "admin-test-key"


def test_they_are_served_only_with_a_profiler_configured(
    stack: Stack, make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    with stack.client() as http:
        assert http.post("/start_profile").status_code == 404
        assert http.post("/stop_profile").status_code == 404
    configured = make_stack(with_worker=False, torch_profiler_dir=str(tmp_path))
    with configured.client() as http:
        answer = http.post("/start_profile")  # served: no worker to record, a 503
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_worker"


def test_under_tenancy_only_the_admin_key_may_call_them(
    make_stack: Callable[..., Stack], migrated_database_url: str, tmp_path: Path
) -> None:
    stack = make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        with_worker=False,
        profiler_config=f'{{"profiler": "torch", "torch_profiler_dir": "{tmp_path}"}}',
    )
    with (
        stack.client() as anonymous,
        stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin,
    ):
        assert anonymous.post("/start_profile").status_code == 401
        assert anonymous.post("/stop_profile").status_code == 401
        assert admin.post("/stop_profile").status_code == 503  # allowed; nothing live


def test_a_worker_that_cannot_record_fails_the_start_at_once_and_it_is_taken_back(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """The scripted worker runs no profiler (its heartbeat says nothing of one), as a
    worker started without --profiler-config: a 500 now, not a 300 s wait, and no
    worker started later records a session nobody will stop."""
    stack = make_stack(torch_profiler_dir=str(tmp_path))
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        with stack.client() as http:
            started = time.monotonic()
            answer = http.post("/start_profile")
            assert time.monotonic() - started < 10
        assert answer.status_code == 500
        assert "without --profiler-config" in answer.json()["error"]["message"]
        asked = ProfileRequest.decode(client.get(stack.names.profile(MODEL)))
        assert asked is not None and asked.on is False
    finally:
        client.close()


def test_a_call_is_settled_only_by_every_live_workers_report() -> None:
    beat = {"instance": "w1", "profile": {"gen": "e:2", "on": True, "error": None}}
    assert _settled("m", "e:2", [beat]) is True
    assert _settled("m", "e:3", [beat]) is None  # not reached yet
    failed = {"instance": "w2", "profile": {"gen": "e:3", "on": False, "error": "OSError: x"}}
    for workers, says in (
        ([], "No worker"),  # all gone before reporting: a trace may be lost, not a 200
        ([beat, {"instance": "w3", "profile": None}], "without --profiler-config"),
        ([beat, failed], "OSError: x"),
    ):
        with pytest.raises(ApiError, match=says) as refused:
            _settled("m", "e:3", workers)
        assert refused.value.status == 500
