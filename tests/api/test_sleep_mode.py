"""Sleep mode's and /reset_prefix_cache's HTTP surface: mounted only when asked for, and
only for the admin key under tenancy. Their effect on real workers is in
tests/e2e/test_sleep_mode.py; the wait for workers in tests/api/test_worker_rollout.py."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Stack

ADMIN_KEY = "admin-test-key"


def test_the_endpoints_are_off_without_their_flags(stack: Stack) -> None:
    with stack.client() as http:
        for method, path in [
            ("POST", "/sleep"),
            ("POST", "/wake_up"),
            ("GET", "/is_sleeping"),
            ("POST", "/reset_prefix_cache"),
        ]:
            assert http.request(method, path).status_code == 404, path


def test_sleep_mode_is_a_development_endpoint_as_in_vllm(make_stack: Callable[..., Stack]) -> None:
    """--enable-sleep-mode alone mounts nothing (a warning says what is missing)."""
    stack = make_stack(enable_sleep_mode=True)
    with stack.client() as http:
        assert http.post("/sleep").status_code == 404
        assert http.get("/is_sleeping").status_code == 404


def test_under_tenancy_only_the_admin_key_may_call_them(
    make_stack: Callable[..., Stack], migrated_database_url: str
) -> None:
    stack = make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        enable_sleep_mode=True,
        server_dev_mode=True,
    )
    with (
        stack.client() as anonymous,
        stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin,
    ):
        for path in ("/sleep", "/wake_up", "/reset_prefix_cache"):
            assert anonymous.post(path).status_code == 401, path
        assert anonymous.get("/is_sleeping").status_code == 401
        # Past the key check: the arguments are looked at (and refused before any change).
        for params, param in [({"level": 3}, "level"), ({"mode": "keep"}, "mode")]:
            bad = admin.post("/sleep", params=params)
            assert bad.status_code == 400
            assert bad.json()["error"]["param"] == param
        assert admin.get("/is_sleeping").json() == {"is_sleeping": False}
