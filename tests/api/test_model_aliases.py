"""vLLM's --served-model-name A B: the model answers to every name, each with its card."""

from __future__ import annotations

import time
from collections.abc import Callable

from .conftest import Stack, log_row, worker_on

MODEL = "smol"


def test_every_name_reaches_the_model_and_is_echoed(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_worker=False)
    given = "/models/smol-135m"  # the model as the worker was given it
    with (
        worker_on(stack, MODEL, aliases=("gpt-4o-mini", "assistant"), root=given) as worker,
        stack.client() as client,
    ):
        listed = client.get("/v1/models").json()["data"]
        assert sorted(card["id"] for card in listed) == ["assistant", "gpt-4o-mini", MODEL]
        assert {card["root"] for card in listed} == {given}  # every name's, as vLLM's
        card = client.get("/v1/models/gpt-4o-mini").json()
        assert (card["id"], card["root"], card["parent"]) == ("gpt-4o-mini", given, None)
        for name in ("gpt-4o-mini", MODEL):
            body = {"model": name, "messages": [{"role": "user", "content": "Hi"}]}
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == name  # as asked, as vLLM answers
            assert worker.received[-1].model == MODEL  # one queue, one model
            # Usage is the model's, whichever name asked: one model, one line on the bill.
            assert log_row(stack, answer.json()["id"]).model == MODEL
        # Still one model served: a request may leave `model` out.
        plain = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert plain.status_code == 200, plain.text
        assert client.get("/v1/models/gpt-5").status_code == 404
    # Its worker gone (its heartbeat expires), the other name is known: 503, not 404.
    with stack.client() as client:
        deadline = time.monotonic() + 10
        while client.get("/v1/models").json()["data"] and time.monotonic() < deadline:
            time.sleep(0.2)
        gone = client.post(
            "/v1/completions", json={"model": "gpt-4o-mini", "prompt": "Hi", "max_tokens": 2}
        )
        assert gone.status_code == 503, gone.text
        assert client.get("/v1/models/never-served").status_code == 404


def test_a_name_two_models_claim_answers_for_neither(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_worker=False)
    with (
        worker_on(stack, "one", aliases=("shared", "first")),
        worker_on(stack, "two", aliases=("shared",), instance="worker-2"),
        stack.client() as client,
    ):
        ids = sorted(card["id"] for card in client.get("/v1/models").json()["data"])
        assert ids == ["first", "one", "two"]
        body = {"model": "shared", "prompt": "Hi", "max_tokens": 2}
        refused = client.post("/v1/completions", json=body)
        assert refused.status_code == 404
        assert "served by several models" in refused.json()["error"]["message"]


def test_an_adapter_may_not_take_a_served_name(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_worker=False, allow_runtime_lora_updating=True)
    with worker_on(stack, MODEL, aliases=("assistant",)), stack.client() as client:
        body = {"lora_name": "assistant", "lora_path": "/adapters/a"}
        refused = client.post("/v1/load_lora_adapter", json=body)
        assert refused.status_code == 400
        assert "name of a served model" in refused.json()["error"]["message"]
