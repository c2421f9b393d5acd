"""vLLM's front-end flags: CORS (--allowed-origins ...), the OpenAPI docs
(--disable-fastapi-docs) and --root-path."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from .conftest import MODEL, Stack, log_row

PREFLIGHT = {
    "Origin": "https://chat.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_browsers_may_call_the_api_by_default(client: httpx.Client) -> None:
    """vLLM allows every origin, method and header unless told otherwise."""
    preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization,content-type"
    listed = client.get("/v1/models", headers={"Origin": "https://chat.example"})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "*"


def test_allowed_origins_limit_which_sites_may_call(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(
        allowed_origins=["https://chat.example"],
        allowed_methods=["GET", "POST"],
        allow_credentials=True,
    )
    with stack.client() as client:
        allowed = client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        other = {**PREFLIGHT, "Origin": "https://evil.example"}
        refused = client.options("/v1/chat/completions", headers=other)
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        delete = {**PREFLIGHT, "Access-Control-Request-Method": "DELETE"}
        assert client.options("/v1/files/x", headers=delete).status_code == 400


def test_openapi_docs_are_served_unless_disabled(
    client: httpx.Client, make_stack: Callable[..., Stack]
) -> None:
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/v1/chat/completions" in schema.json()["paths"]
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200
    stack = make_stack(disable_fastapi_docs=True)
    with stack.client() as quiet:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert quiet.get(path).status_code == 404


def test_root_path_serves_behind_a_prefixing_proxy(make_stack: Callable[..., Stack]) -> None:
    """The proxy serves the API under /llm and strips the prefix; the docs point browsers
    at the prefixed schema."""
    stack = make_stack(root_path="/llm", max_body_bytes=1000)
    with stack.client() as client:
        assert client.get("/v1/models").status_code == 200
        assert "/llm/openapi.json" in client.get("/docs").text
        # Middleware that picks requests by path sees them without the prefix too: the
        # request log (usage), /invocations' routing, uploads past the JSON body limit.
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        invoked = client.post("/invocations", json=body)
        assert invoked.status_code == 200, invoked.text
        row = log_row(stack, invoked.json()["id"])
        assert (row.endpoint, row.status_code) == ("/v1/completions", 200)
        upload = client.post(
            "/v1/files",
            data={"purpose": "user_data"},
            files={"file": ("big.txt", b"x" * 5000)},
        )
        assert upload.status_code == 200, upload.text
        # Anthropic's Messages API answers its errors in its own shape under the prefix too.
        refused = client.post("/v1/messages", json={"model": MODEL, "messages": []})
        assert refused.status_code == 400
        assert refused.json()["type"] == "error", refused.text


def test_uds_serves_the_api_on_a_unix_socket(
    make_stack: Callable[..., Stack], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """vLLM's --uds: the API on a Unix domain socket instead of a TCP port, for a proxy or
    sidecar on the same host."""
    path = tmp_path_factory.mktemp("uds") / "api.sock"
    stack = make_stack(uds=str(path))
    assert path.is_socket()
    with stack.client() as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
        answer = client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        )
        assert answer.status_code == 200, answer.text
