"""LoRA adapters on the real `conveyor serve` tree, through the official SDK: an adapter is a
model of its own name whose greedy answers are the engine's with that adapter applied."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from benchmarks.random_lora import build_random_lora
from engine.llm import LLM, greedy
from engine.lora_config import LoRAConfig

from .conftest import serving

MODEL = "smollm2"
ADAPTER = "terse"
LATE = "late"  # loaded through /v1/load_lora_adapter
MESSAGES = [{"role": "user", "content": "Name three colors of the rainbow."}]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def adapter_dir(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora") / ADAPTER
    return build_random_lora(folder, bundled_model_dir, rank=8, alpha=16, init_std=0.05, seed=3)


@pytest.fixture(scope="module")
def late_dir(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora") / LATE
    return build_random_lora(
        folder, bundled_model_dir, rank=4, alpha=8, init_std=0.05, targets=("q_proj", "v_proj")
    )


@pytest.fixture(scope="module")
def client(bundled_model_dir: Path, adapter_dir: Path) -> Iterator[openai.OpenAI]:
    modules = json.dumps([f"{ADAPTER}={adapter_dir}"])
    with serving(
        bundled_model_dir,
        CONVEYOR_LORA_MODULES=modules,
        CONVEYOR_ALLOW_RUNTIME_LORA_UPDATING="true",
    ) as (base_url, _):
        sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        yield sdk
        sdk.close()


@pytest.fixture(scope="module")
def expected(bundled_model_dir: Path, adapter_dir: Path, late_dir: Path) -> dict[str | None, str]:
    """The in-process engine's greedy answers, with each adapter and without."""
    llm = LLM(
        str(bundled_model_dir),
        max_model_len=2048,
        kv_cache_memory=256 << 20,
        lora_config=LoRAConfig.from_entries([f"{ADAPTER}={adapter_dir}", f"{LATE}={late_dir}"], 16),
    )
    prompt = llm.tokenizer.apply_chat_template(MESSAGES)
    return {
        lora: llm.generate([prompt], greedy(MAX_TOKENS), lora=lora)[0].text
        for lora in (ADAPTER, LATE, None)
    }


def test_the_adapter_is_a_model_whose_answers_are_the_engines(
    client: openai.OpenAI, expected: dict[str | None, str], adapter_dir: Path
) -> None:
    assert expected[ADAPTER] != expected[None]  # the adapter changes the answer
    card = client.models.retrieve(ADAPTER).model_dump()
    assert (card["parent"], card["root"]) == (MODEL, str(adapter_dir))
    assert {m.id for m in client.models.list()} == {MODEL, ADAPTER}
    for model, lora in ((ADAPTER, ADAPTER), (MODEL, None)):
        answer = client.chat.completions.create(
            model=model, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS
        )
        assert answer.model == model
        assert answer.choices[0].message.content == expected[lora], model
    stream = client.chat.completions.create(
        model=ADAPTER, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected[ADAPTER]
    )


def test_an_adapter_loaded_at_run_time_is_served_then_unloaded(
    client: openai.OpenAI, expected: dict[str | None, str], late_dir: Path
) -> None:
    assert expected[LATE] not in (expected[None], expected[ADAPTER])
    base = str(client.base_url).removesuffix("/v1/").removesuffix("/v1")
    with httpx.Client(base_url=base, timeout=120) as http:
        loaded = http.post(
            "/v1/load_lora_adapter", json={"lora_name": LATE, "lora_path": str(late_dir)}
        )
        assert loaded.status_code == 200, loaded.text
        answer = client.chat.completions.create(
            model=LATE, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS
        )
        assert answer.choices[0].message.content == expected[LATE]
        unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": LATE})
        assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=LATE, messages=MESSAGES, max_tokens=2)
    assert {m.id for m in client.models.list()} == {MODEL, ADAPTER}
