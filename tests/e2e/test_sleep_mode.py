"""vLLM's sleep mode and /reset_prefix_cache on the real `conveyor serve` tree: a sleeping
model refuses generation with a 503 and keeps its other endpoints, a woken one answers
exactly as before, and a reset prefix cache serves the next prompt cold."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import operator_clients, serving

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Name three colors of the rainbow."}]
# Long enough for whole KV blocks to be cached and read back.
LONG = "Describe the water cycle in detail. " * 12


@pytest.fixture(scope="module")
def server(bundled_model_dir: Path) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    with (
        serving(bundled_model_dir, "--enable-sleep-mode", VLLM_SERVER_DEV_MODE="1") as (
            base_url,
            _,
        ),
        operator_clients(base_url) as clients,
    ):
        yield clients


def answer(sdk: openai.OpenAI) -> str:
    reply = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0
    )
    return reply.choices[0].message.content or ""


def is_sleeping(http: httpx.Client) -> bool:
    reply = http.get("/is_sleeping")
    assert reply.status_code == 200, reply.text
    return reply.json()["is_sleeping"]


def sleep_states(http: httpx.Client) -> dict[str, float]:
    """vllm:engine_sleep_state of the one worker, by state."""
    found = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "vllm:engine_sleep_state":
            found.update({s.labels["sleep_state"]: s.value for s in family.samples})
    return found


def refused(sdk: openai.OpenAI) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        answer(sdk)
    return caught.value


@pytest.mark.parametrize("level", [1, 2])
def test_a_sleeping_model_refuses_generation_and_wakes_to_the_same_answers(
    server: tuple[httpx.Client, openai.OpenAI], level: int
) -> None:
    http, sdk = server
    before = answer(sdk)
    assert not is_sleeping(http)
    assert http.post("/sleep", params={"level": level}).status_code == 200
    assert is_sleeping(http)
    assert sleep_states(http) == {
        "awake": 0.0,
        "weights_offloaded": float(level == 1),
        "discard_all": float(level == 2),
    }
    error = refused(sdk)
    assert error.status_code == 503
    assert error.body["code"] == "model_sleeping"  # type: ignore[index]
    # What needs no weights goes on.
    assert [m.id for m in sdk.models.list()] == [MODEL]
    assert http.post("/tokenize", json={"model": MODEL, "prompt": "hi"}).status_code == 200
    assert http.post("/wake_up").status_code == 200
    assert not is_sleeping(http)
    assert sleep_states(http)["awake"] == 1.0
    assert answer(sdk) == before


def test_parts_wake_one_at_a_time(server: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, sdk = server
    before = answer(sdk)
    assert http.post("/sleep", params={"level": 2}).status_code == 200
    assert http.post("/wake_up", params={"tags": "weights"}).status_code == 200
    assert is_sleeping(http)
    assert refused(sdk).status_code == 503
    assert http.post("/wake_up", params={"tags": "kv_cache"}).status_code == 200
    assert not is_sleeping(http)
    assert answer(sdk) == before


def test_a_sleep_ends_a_running_stream_with_an_error_or_waits_for_it(
    server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    """vLLM's modes: abort (the default) ends what runs; wait lets it finish first."""
    http, sdk = server

    def stream_then_sleep(mode: str) -> tuple[list[str], BaseException | None]:
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=300,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        pieces: list[str] = []
        asleep: list[int] = []
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 3 and not asleep:  # it runs: now put the model to sleep
                    sleeper = threading.Thread(
                        target=lambda: asleep.append(
                            http.post("/sleep", params={"mode": mode}).status_code
                        )
                    )
                    sleeper.start()
        except openai.APIError as exc:
            sleeper.join()
            return pieces, exc
        sleeper.join()
        assert asleep == [200]
        return pieces, None

    pieces, error = stream_then_sleep("abort")
    assert error is not None and "put to sleep while this request ran" in str(error)
    assert is_sleeping(http)
    assert http.post("/wake_up").status_code == 200
    pieces, error = stream_then_sleep("wait")
    assert error is None and len(pieces) >= 290  # every token (a few may join in one piece)
    assert is_sleeping(http)
    assert http.post("/wake_up").status_code == 200


def test_bad_arguments_are_400s(server: tuple[httpx.Client, openai.OpenAI]) -> None:
    http, _ = server
    for path, params, param in [
        ("/sleep", {"level": 3}, "level"),
        ("/wake_up", {"tags": "kv"}, "tags"),
    ]:
        reply = http.post(path, params=params)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == param
    missing = http.post("/sleep", params={"model": "nope"})
    assert missing.status_code == 404
    assert not is_sleeping(http)


def test_a_reset_prefix_cache_serves_the_next_prompt_cold(
    server: tuple[httpx.Client, openai.OpenAI],
) -> None:
    http, sdk = server

    def cached() -> int:
        reply = sdk.completions.create(model=MODEL, prompt=LONG, max_tokens=1, temperature=0)
        details = reply.usage.prompt_tokens_details if reply.usage else None
        return (details.cached_tokens or 0) if details else 0

    cached()
    assert cached() > 0  # the second time reads the first one's blocks
    assert http.post("/reset_prefix_cache").status_code == 200
    assert cached() == 0
    assert http.post("/reset_prefix_cache", params={"model": "nope"}).status_code == 404
