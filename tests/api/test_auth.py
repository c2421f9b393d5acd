"""API keys: required on every resource route, never bypassed by how a path is spelled."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request

from api.auth import API_KEY_HEADER, BATCH_HEADER, PROJECT_HEADER, Authenticator
from api.errors import ApiError
from conveyor.settings import Settings

from .conftest import MODEL, Stack, running_stack

KEY = "sk-test-secret"


@pytest.fixture(scope="module")
def secured(redis_url: str, bundled_model_dir: Path) -> Iterator[Stack]:
    with running_stack(redis_url, bundled_model_dir, api_key=KEY) as started:
        yield started


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1}),
    ("POST", "/tokenize", {"model": MODEL, "prompt": "x"}),
    ("POST", "/detokenize", {"model": MODEL, "tokens": [1]}),
]


def test_missing_or_wrong_key_is_401(secured: Stack) -> None:
    with secured.client() as http:
        for method, path, body in PROTECTED:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {KEY}"},
                {"Authorization": "Bearer"},
            ):
                response = http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.json()["error"]["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"] == "Bearer"
            # Auth comes before body parsing: a malformed body without a key is still 401.
            if method == "POST":
                response = http.post(path, content=b"{broken")
                assert response.status_code == 401


def test_right_key_and_public_paths(secured: Stack) -> None:
    good = {"Authorization": f"Bearer {KEY}"}
    with secured.client() as http:
        for method, path, body in PROTECTED:
            response = http.request(method, path, json=body, headers=good)
            assert response.status_code == 200, (path, response.text)
        for path in ("/health", "/version", "/metrics"):
            assert http.get(path).status_code == 200, path


def test_anthropic_clients_send_the_key_as_x_api_key(secured: Stack) -> None:
    """Anthropic's SDK (and LiteLLM's passthrough) send `x-api-key`, taken as the key on
    every path; a wrong one is a 401 in the shape of the path's API."""
    message = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    with secured.client() as http:
        assert http.post("/v1/messages", json=message, headers={"x-api-key": KEY}).is_success
        assert http.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": KEY}).is_success
        wrong = http.post("/v1/messages", json=message, headers={"x-api-key": "wrong"})
        assert wrong.status_code == 401
        assert wrong.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "Incorrect API key provided"},
        }
        missing = http.post("/v1/chat/completions", json=CHAT)
        assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]


def _raw_get(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send the request target exactly as written (HTTP clients would normalise it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        body = b'{"model": "fake-model", "prompt": "x"}' if method == "POST" else b""
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize(
    "target",
    [
        "//v1/models",
        "/v1/../v1/models",
        "/v1/./models",
        "/v1%2Fmodels",
        "/v1%2fmodels",
        "/%761/models",
        "/health/../v1/models",
        "/metrics/..%2Fv1/models",
        "/v1/models/",
        "/V1/models",
        "http://test/v1/models",
    ],
)
def test_path_tricks_never_skip_auth(secured: Stack, target: str) -> None:
    status, raw = _raw_get(secured.server.port, target)
    assert status in (400, 401, 404), (target, raw[:300])
    assert MODEL.encode() not in raw.split(b"\r\n\r\n", 1)[-1]


@pytest.mark.parametrize("target", ["//v1/completions", "/v1/%2E%2E/v1/completions"])
def test_post_path_tricks_never_skip_auth(secured: Stack, target: str) -> None:
    status, _ = _raw_get(secured.server.port, target, method="POST")
    assert status in (400, 401, 404)


def test_batch_line_is_recognised_when_the_service_key_is_also_the_static_key() -> None:
    """One secret for --api-key and --admin-key (the default service key): a request with
    the batch headers is still a batch line (billed to its project, batch lane)."""
    settings = Settings(api_key=KEY, admin_key=KEY)
    authenticator = Authenticator(settings, keys=None)  # type: ignore[arg-type]
    headers = {
        "authorization": f"Bearer {KEY}",
        BATCH_HEADER: "batch_1",
        PROJECT_HEADER: "proj_1",
        API_KEY_HEADER: "key_1",
    }
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    principal = asyncio.run(authenticator.principal(Request(scope)))
    assert (principal.batch_id, principal.project_id, principal.api_key_id) == (
        "batch_1",
        "proj_1",
        "key_1",
    )


def _bearer(token: str) -> Request:
    header = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "GET", "path": "/v1/models", "headers": header})


def test_any_of_several_static_keys_is_accepted() -> None:
    """vLLM's `--api-key K1 K2`: either key calls the API, no other does."""
    authenticator = Authenticator(Settings(api_key=["k-one", "k-two"]), keys=_NoKeys())
    for key in ("k-one", "k-two"):
        assert asyncio.run(authenticator.principal(_bearer(key))).project_id is None
    with pytest.raises(ApiError) as refused:
        asyncio.run(authenticator.principal(_bearer("k-three")))
    assert refused.value.status == 401


class _NoKeys:
    """A key cache that knows no project keys."""

    async def lookup(self, digest: str) -> None:
        return None
