"""LoRA adapters as models: listed with their parent, queued on the base model's stream with
the adapter named, and offered only when every worker of the base model serves them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from .conftest import MODEL, Stack, sdk_client, worker_on
from .fakes import FakeWorker

ADAPTERS = {"sql-expert": "/adapters/sql", "poet": "/adapters/poet"}


@pytest.fixture()
def lora_stack(make_stack: Callable[..., Stack]) -> Iterator[tuple[Stack, FakeWorker]]:
    """An API server and one scripted worker of MODEL that announces two adapters."""
    stack = make_stack(with_worker=False)
    with worker_on(stack, loras=dict(ADAPTERS)) as worker:
        yield stack, worker


def test_adapters_are_listed_as_models_of_their_base(lora_stack) -> None:
    stack, _ = lora_stack
    with sdk_client(stack) as sdk:
        cards = {card.id: card for card in sdk.models.list()}
        assert set(cards) == {MODEL, *ADAPTERS}
        for name, path in ADAPTERS.items():
            card = cards[name].model_dump()
            assert (card["parent"], card["root"]) == (MODEL, path)
            assert card["max_model_len"] == cards[MODEL].model_dump()["max_model_len"]
            assert sdk.models.retrieve(name).model_dump() == card
        assert cards[MODEL].model_dump()["parent"] is None


def test_an_adapter_request_joins_the_base_models_queue_naming_the_adapter(lora_stack) -> None:
    stack, worker = lora_stack
    with sdk_client(stack) as sdk:
        chat = sdk.chat.completions.create(
            model="sql-expert", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert chat.model == "sql-expert"
        assert chat.choices[0].message.content == worker.tokenizer.decode(worker.script[:4])
        chunks = list(
            sdk.completions.create(model="poet", prompt="Roses", max_tokens=3, stream=True)
        )
        assert {c.model for c in chunks} == {"poet"}
        response = sdk.responses.create(model="poet", input="Hi", max_output_tokens=2)
        assert response.model == "poet"
        sdk.completions.create(model=MODEL, prompt="plain", max_tokens=1)
    assert [(r.model, r.lora) for r in worker.received] == [
        (MODEL, "sql-expert"),
        (MODEL, "poet"),
        (MODEL, "poet"),
        (MODEL, None),
    ]
    # The adapter's prompt is the base model's tokenization of it.
    assert worker.received[1].prompt_token_ids == worker.tokenizer.encode("Roses")


def test_tokenize_takes_an_adapter_name(lora_stack) -> None:
    stack, worker = lora_stack
    with stack.client() as http:
        # No model named: the one base model (its adapters are not other tokenizers).
        unnamed = http.post("/tokenize", json={"prompt": "Hello"})
        assert unnamed.json()["tokens"] == worker.tokenizer.encode("Hello"), unnamed.text
        body = http.post("/tokenize", json={"model": "poet", "prompt": "Hello"}).json()
        assert body["tokens"] == worker.tokenizer.encode("Hello")
        text = http.post("/detokenize", json={"model": "poet", "tokens": body["tokens"]}).json()
        assert text["prompt"] == "Hello"


def test_an_adapter_some_workers_lack_is_not_offered(lora_stack) -> None:
    """Any worker of the base model may take the request, so every one must have the
    adapter, from the same folder; the model itself stays healthy meanwhile."""
    stack, _ = lora_stack
    partial = {"poet": ADAPTERS["poet"], "sql-expert": "/elsewhere/sql"}
    with worker_on(stack, instance="worker-2", loras=partial), sdk_client(stack) as sdk:
        assert {card.id for card in sdk.models.list()} == {MODEL, "poet"}
        with stack.client() as http:
            assert http.get("/health").status_code == 200
            metrics = http.get("/metrics").text
            assert 'model="poet"' not in metrics and f'model="{MODEL}"' in metrics
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(
                model="sql-expert", messages=[{"role": "user", "content": "Hi"}]
            )
        # Announced before, so "no live worker now" (503), not "does not exist".
        assert caught.value.status_code == 503
        with pytest.raises(openai.NotFoundError):
            sdk.completions.create(model="never-served", prompt="x")


def test_an_ambiguous_adapter_name_is_not_offered(lora_stack) -> None:
    """A name two models' workers both use for an adapter, or a model's own name, would
    route by chance: it is offered for neither."""
    stack, _ = lora_stack
    loras = {"poet": "/adapters/poet", MODEL: "/adapters/shadow", "haiku": "/adapters/haiku"}
    with (
        worker_on(stack, "other-model", instance="worker-3", loras=loras),
        sdk_client(stack) as sdk,
    ):
        cards = {card.id: card.model_dump() for card in sdk.models.list()}
    assert set(cards) == {MODEL, "other-model", "sql-expert", "haiku"}
    assert cards["haiku"]["parent"] == "other-model"
    assert cards[MODEL]["parent"] is None
