"""vLLM's /start_profile and /stop_profile over HTTP: served only with --profiler-config
(as vLLM serves them only with a profiler configured), for the admin key under tenancy.
Recording on real workers is in tests/workers/test_profiler.py and
tests/e2e/test_profile.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .conftest import Stack

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
