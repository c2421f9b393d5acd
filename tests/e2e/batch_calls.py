"""What an e2e test does with a batch through the SDK: submit lines, wait for an end, read
a result file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai

DONE = ("completed", "failed", "cancelled", "expired")


def submit(
    client: openai.OpenAI,
    lines: list[dict[str, Any]] | bytes,
    endpoint: str = "/v1/chat/completions",
) -> Any:
    raw = lines if isinstance(lines, bytes) else "\n".join(map(json.dumps, lines)).encode()
    uploaded = client.files.create(file=("input.jsonl", raw), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )


def wait_until(
    client: openai.OpenAI,
    batch_id: str,
    done: Callable[[Any], bool] = lambda batch: batch.status in DONE,
    timeout: float = 180,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} stuck: {client.batches.retrieve(batch_id)}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
