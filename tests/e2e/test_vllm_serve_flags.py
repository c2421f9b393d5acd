"""A `vllm serve` command line, run by `conveyor serve` as it is: HTTPS, two data-parallel
engine workers behind two API processes on one port, served sampling defaults, CORS, and
batches whose worker reaches the API over that HTTPS; called with the official `openai`
SDK trusting the server's certificate."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from ..self_signed import self_signed_certificate
from .batch_calls import jsonl, submit, wait_until
from .conftest import serving

MODEL = "smollm2"
ORIGIN = "https://chat.example"


@dataclass(frozen=True)
class TlsServer:
    base_url: str
    trust: ssl.SSLContext  # trusts its certificate
    pid: int


@pytest.fixture(scope="module")
def tls_server(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder)
    trust = ssl.create_default_context(cafile=str(cert))
    flags = [
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "-dp",
        "2",
        "--api-server-count",
        "2",
        "--override-generation-config",
        '{"max_new_tokens": 6, "temperature": 0}',
        "--allowed-origins",
        json.dumps([ORIGIN]),
        "--max-logprobs",
        "3",
        "--uvicorn-log-level",
        "warning",
        # vLLM flags that change nothing here, as a copied command line would carry them.
        "--trust-remote-code",
        "-tp",
        "1",
        "--disable-log-requests",
    ]
    with serving(
        bundled_model_dir,
        *flags,
        scheme="https",
        verify=trust,
        CONVEYOR_DATA_DIR=str(folder / "data"),
        CONVEYOR_BATCH_SWEEP_INTERVAL="1",
    ) as (base_url, process):
        yield TlsServer(base_url, trust, process.pid)


@pytest.fixture()
def sdk(tls_server: TlsServer) -> Iterator[openai.OpenAI]:
    with httpx.Client(verify=tls_server.trust) as http:
        yield openai.OpenAI(
            base_url=f"{tls_server.base_url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=http,
        )


def test_https_only_and_two_workers_serve_one_model(
    tls_server: TlsServer,
) -> None:
    base_url, trust = tls_server.base_url, tls_server.trust
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not spoken on the TLS port
        httpx.get(base_url.replace("https://", "http://") + "/health", timeout=5)
    deadline = time.monotonic() + 120  # /health is ready with the first worker live
    while True:
        metrics = httpx.get(f"{base_url}/metrics", verify=trust).text
        workers = {
            line.split('worker="', 1)[1].split('"', 1)[0]
            for line in metrics.splitlines()
            if line.startswith("vllm:num_requests_running{")
        }
        if len(workers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(workers) == 2, metrics  # --data-parallel-size 2


def test_served_defaults_and_limits_apply_to_sdk_calls(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    first = sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert first.usage is not None and first.usage.completion_tokens == 6
    assert first.choices[0].finish_reason == "length"
    again = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=50)  # type: ignore[arg-type]
    assert again.choices[0].message.content == first.choices[0].message.content  # temperature 0
    streamed = sdk.chat.completions.create(model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == first.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="--max-logprobs"):
        sdk.completions.create(model=MODEL, prompt="Hi", logprobs=4)


def test_browsers_of_the_allowed_origin_only(tls_server: TlsServer) -> None:
    base_url, trust = tls_server.base_url, tls_server.trust
    preflight = {"Access-Control-Request-Method": "POST", "Origin": ORIGIN}
    with httpx.Client(base_url=base_url, verify=trust) as client:
        allowed = client.options("/v1/chat/completions", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        other = client.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "https://else.example"}
        )
        assert other.status_code == 400


def test_a_batch_runs_through_the_https_api(sdk: openai.OpenAI) -> None:
    """The batch worker sends its lines to this host's API over HTTPS (loopback)."""
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i}"}]},
        }
        for i in range(3)
    ]
    batch = wait_until(sdk, submit(sdk, lines).id)
    assert batch.status == "completed", batch
    results = jsonl(sdk, batch.output_file_id)
    assert sorted(r["custom_id"] for r in results) == ["line-0", "line-1", "line-2"]
    for result in results:
        assert result["response"]["status_code"] == 200
        assert result["response"]["body"]["usage"]["completion_tokens"] <= 6


def _child_roles(pid: int) -> list[str]:
    """The `conveyor` sub-command each child of `pid` runs."""
    roles = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"conveyor.cli" in argv:
            roles.append(argv[argv.index(b"conveyor.cli") + 1].decode())
    return sorted(roles)


def test_two_api_processes_share_the_port(tls_server: TlsServer, sdk: openai.OpenAI) -> None:
    """--api-server-count 2: both accept on the one port; every request is answered."""
    assert _child_roles(tls_server.pid) == ["api", "api", "batch-worker", "worker", "worker"]
    messages = [{"role": "user", "content": "Say hi."}]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: sdk.chat.completions.create(model=MODEL, messages=messages),  # type: ignore[arg-type]
                range(16),
            )
        )
    assert len({a.choices[0].message.content for a in answers}) == 1  # temperature 0
