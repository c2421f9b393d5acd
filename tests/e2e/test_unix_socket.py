"""`conveyor serve --uds PATH` (vLLM's flag): the API on a Unix domain socket, shared by two
API processes, called with the official `openai` SDK over that socket; the batch worker
sends its lines through it too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .batch_calls import jsonl, submit, wait_until
from .conftest import serving

MODEL = "smollm2"


@pytest.fixture(scope="module")
def socket_path(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("uds")
    path = folder / "api.sock"
    with serving(
        bundled_model_dir,
        "--api-server-count",
        "2",
        uds=path,
        CONVEYOR_DATA_DIR=str(folder / "data"),
        CONVEYOR_BATCH_SWEEP_INTERVAL="1",
    ):
        yield path


@pytest.fixture()
def sdk(socket_path: Path) -> Iterator[openai.OpenAI]:
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport) as http:
        yield openai.OpenAI(
            base_url="http://localhost/v1", api_key="unused", max_retries=0, http_client=http
        )


def test_the_sdk_is_served_over_the_socket(socket_path: Path, sdk: openai.OpenAI) -> None:
    assert socket_path.is_socket()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
    )
    streamed = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == whole.choices[0].message.content and text


def test_a_batch_runs_through_the_socket(sdk: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 4},
        }
        for i in range(2)
    ]
    batch = wait_until(sdk, submit(sdk, lines, "/v1/completions").id)
    assert batch.status == "completed", batch.errors
    output = jsonl(sdk, batch.output_file_id)
    assert sorted(row["custom_id"] for row in output) == ["line-0", "line-1"]
    assert all(row["response"]["status_code"] == 200 for row in output)
