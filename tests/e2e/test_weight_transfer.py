"""vLLM's RL weight-update flow on the real `conveyor serve` tree with the disk backend: a
trainer's later checkpoint, read in through /update_weights between /pause and /resume,
makes the server answer as an engine started on it; a folder that cannot be read is a
500 that leaves the old weights serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.llm import LLM
from engine.sampling_params import SamplingParams

from ..training_steps import later_step
from .conftest import operator_clients, serving

MODEL = "smollm2"
PROMPT = [5, 77, 300, 12, 9, 8, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]


@pytest.fixture(scope="module")
def steps(
    make_random_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    first = make_random_model("llama")
    return first, later_step(first, tmp_path_factory.mktemp("trainer") / "step-2", seed=11)


@pytest.fixture(scope="module")
def server(
    bundled_model_dir: Path, steps: tuple[Path, Path]
) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    first, _ = steps
    with (
        serving(
            bundled_model_dir,
            "--weight-transfer-config",
            '{"backend": "disk"}',
            VLLM_SERVER_DEV_MODE="1",
            CONVEYOR_MODEL=str(first),
            CONVEYOR_MAX_MODEL_LEN="512",
        ) as (base_url, _),
        operator_clients(base_url) as clients,
    ):
        yield clients


def served(sdk: openai.OpenAI) -> str:
    reply = sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    return reply.choices[0].text


def engine_answer(folder: Path) -> str:
    llm = LLM(str(folder), kv_cache_memory=16 << 20)
    return llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=8))[0].choices[0].text


def test_a_trainers_checkpoint_read_in_makes_the_server_answer_as_it(
    server: tuple[httpx.Client, openai.OpenAI], steps: tuple[Path, Path]
) -> None:
    http, sdk = server
    first, second = steps
    before = served(sdk)
    assert before == engine_answer(first)
    want = engine_answer(second)
    assert want != before
    init = http.post("/init_weight_transfer_engine", json={"init_info": {}})
    assert init.status_code == 200, init.text
    assert http.post("/pause", params={"mode": "keep"}).status_code == 200
    assert http.post("/start_weight_update").status_code == 200
    update = http.post("/update_weights", json={"update_info": {"path": str(second)}})
    assert update.status_code == 200, update.text
    assert update.json() == {"message": "Weights updated"}
    finish = http.post("/finish_weight_update", json={"weight_version": "step-2"})
    assert finish.status_code == 200
    assert http.post("/resume").status_code == 200
    assert served(sdk) == want
    assert http.get("/weight_info").json() == {"weight_version": "step-2"}
    back = http.post("/update_weights", json={"update_info": {"path": str(first)}})
    assert back.status_code == 200, back.text
    assert served(sdk) == before


def test_a_folder_that_cannot_be_read_is_a_500_and_the_old_weights_serve_on(
    server: tuple[httpx.Client, openai.OpenAI], steps: tuple[Path, Path], tmp_path: Path
) -> None:
    http, sdk = server
    first, second = steps
    before = served(sdk)
    reply = http.post("/update_weights", json={"update_info": {"path": str(tmp_path)}})
    assert reply.status_code == 500
    assert "no safetensors" in reply.json()["error"]["message"]
    assert served(sdk) == before
    # No version names weights that are not served.
    refused = http.post("/finish_weight_update", json={"weight_version": "step-3"})
    assert refused.status_code == 409 and "no safetensors" in refused.text
    assert http.get("/weight_info").json()["weight_version"] != "step-3"
    # The next update is read as any other.
    for folder in (second, first):
        update = http.post("/update_weights", json={"update_info": {"path": str(folder)}})
        assert update.status_code == 200, update.text
        assert served(sdk) == engine_answer(folder)
    finish = http.post("/finish_weight_update", json={"weight_version": "step-1"})
    assert finish.status_code == 200
    assert http.get("/weight_info").json() == {"weight_version": "step-1"}
