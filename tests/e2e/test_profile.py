"""vLLM's /start_profile and /stop_profile on the real `conveyor serve` tree: the steps a
chat took between the two calls are in a torch trace in --profiler-config's folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from .conftest import operator_clients, serving

MODEL = "smollm2"


def test_a_chat_between_start_and_stop_is_in_the_trace(
    bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("traces")
    config = json.dumps({"profiler": "torch", "torch_profiler_dir": str(folder)})
    with (
        serving(bundled_model_dir, "--profiler-config", config) as (base_url, _),
        operator_clients(base_url) as (http, sdk),
    ):
        assert http.post("/start_profile").status_code == 200
        reply = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content
        assert list(folder.iterdir()) == []  # written when the recording stops
        assert http.post("/stop_profile").status_code == 200
    (trace,) = folder.iterdir()
    assert trace.name.startswith(f"{MODEL}.") and trace.name.endswith(".pt.trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(event.get("name", "").startswith("aten::") for event in events)
