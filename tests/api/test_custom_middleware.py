"""vLLM's --middleware: an operator's ASGI middleware class or async function, added to
the API by import path; one that cannot be used stops start-up, naming the flag."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from api.server import run_api
from conveyor.child_process import CONFIGURATION_ERROR
from conveyor.settings import Settings

from .conftest import MODEL, Stack

# A gateway check (a class, pure ASGI) and a response header (a function), as an
# operator would write them in a module of their own.
OPERATOR_MODULE = textwrap.dedent(
    '''
    import json

    class RequireTeamHeader:
        """403 for /v1 calls without an x-team header; everything else passes."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            headers = dict(scope.get("headers", ()))
            if scope["type"] == "http" and scope["path"].startswith("/v1") and (
                b"x-team" not in headers
            ):
                body = json.dumps({"error": {"message": "x-team required"}}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, send)

    async def stamp(request, call_next):
        response = await call_next(request)
        response.headers["x-served-by"] = "conveyor-eu-1"
        return response

    NOT_MIDDLEWARE = 42
    '''
)


@pytest.fixture()
def operator_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "operator_mw.py").write_text(OPERATOR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "operator_mw"


def test_a_class_and_a_function_both_run(
    make_stack: Callable[..., Stack], operator_module: str
) -> None:
    stack = make_stack(
        middleware=[f"{operator_module}.RequireTeamHeader", f"{operator_module}:stamp"]
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with stack.client() as http:
        refused = http.post("/v1/chat/completions", json=body)
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == "x-team required"
        assert "x-request-id" in refused.headers  # conveyor's own stays outermost
        served = http.post("/v1/chat/completions", json=body, headers={"x-team": "search"})
        assert served.status_code == 200, served.text
        assert served.headers["x-served-by"] == "conveyor-eu-1"
        assert http.get("/health").status_code == 200  # not under /v1: passes


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("no_such_module_xyz.Thing", "cannot import no_such_module_xyz"),
        ("{module}.Missing", "has no Missing"),
        ("{module}.NOT_MIDDLEWARE", "expected an ASGI middleware class or an async function"),
        ("bare", "expected an import path"),
    ],
)
def test_one_that_cannot_be_used_stops_start_up(
    operator_module: str, path: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1", middleware=[path.format(module=operator_module)]
    )
    with caplog.at_level(logging.ERROR, logger="api.server"):
        assert run_api(settings) == CONFIGURATION_ERROR
    (line,) = [r.getMessage() for r in caplog.records if r.name == "api.server"]
    assert line.startswith("--middleware ") and says in line
