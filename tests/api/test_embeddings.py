"""POST /v1/embeddings against scripted workers: shapes, encodings, routing and refusals.

The fake pooling worker answers each input with facts of its tokens
(tests/api/fakes.py: fake_embedding_values), so every test can tell which
input a vector came from. Real vectors: tests/workers and tests/e2e.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from api.errors import ApiError
from api.prompt_truncation import truncated_text_ids

from .conftest import MAX_MODEL_LEN, MODEL, Stack, worker_on
from .fakes import FakeWorker, fake_embedding_values, wait_for

EMBEDDER = "fake-embedder"


@pytest.fixture(scope="module")
def embedder(stack: Stack) -> Iterator[FakeWorker]:
    with worker_on(
        stack, EMBEDDER, instance="embedder-1", runner="pooling", matryoshka_dimensions=(3, 6)
    ) as worker:
        yield worker


@pytest.fixture()
def embed_worker(embedder: FakeWorker) -> FakeWorker:
    embedder.behaviour = "normal"
    embedder.received.clear()
    return embedder


def test_the_sdk_gets_each_input_s_vector_in_order_float_and_base64(
    sdk: openai.OpenAI, embed_worker: FakeWorker
) -> None:
    texts = ["the first input", "a second, longer input than the first", "3"]
    ids = [embed_worker.tokenizer.encode(t) for t in texts]
    # The SDK asks for base64 by default and decodes it itself.
    for fmt in (openai.NOT_GIVEN, "float"):
        result = sdk.embeddings.create(model=EMBEDDER, input=texts, encoding_format=fmt)
        assert result.object == "list" and result.model == EMBEDDER
        assert [d.index for d in result.data] == [0, 1, 2]
        for data, prompt in zip(result.data, ids, strict=True):
            assert data.object == "embedding"
            assert data.embedding == pytest.approx(fake_embedding_values(prompt, None))
        assert result.usage.prompt_tokens == result.usage.total_tokens == sum(map(len, ids))
    # One queued request per input, each an embedding (not a generation).
    assert all(r.pooling is not None for r in embed_worker.received)


def test_base64_is_little_endian_float32(client: httpx.Client, embed_worker: FakeWorker) -> None:
    reply = client.post(
        "/v1/embeddings",
        json={"model": EMBEDDER, "input": [[7, 8, 9]], "encoding_format": "base64"},
    )
    assert reply.status_code == 200, reply.text
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert values == pytest.approx(fake_embedding_values([7, 8, 9], None))


def test_token_inputs_dimensions_and_vllm_extras_reach_the_worker(
    client: httpx.Client, embed_worker: FakeWorker
) -> None:
    reply = client.post(
        "/v1/embeddings",
        json={
            "model": EMBEDDER,
            "input": [[5, 6, 7, 8, 9], [10, 11]],
            "dimensions": 3,
            "normalize": False,
            "truncate_prompt_tokens": 3,
            "priority": -2,
        },
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    cut = {"dimensions": 3}
    assert data[0]["embedding"] == pytest.approx(fake_embedding_values([7, 8, 9], cut))
    assert data[1]["embedding"] == pytest.approx(fake_embedding_values([10, 11], cut))
    assert reply.json()["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    got = sorted(embed_worker.received, key=lambda r: r.id)
    assert [r.prompt_token_ids for r in got] == [[7, 8, 9], [10, 11]]
    assert all(r.pooling == {"dimensions": 3, "normalize": False} for r in got)
    assert all(r.priority == -2 and not r.stream for r in got)


def test_a_conversation_is_embedded_as_its_chat_template_renders_it(
    client: httpx.Client, embed_worker: FakeWorker
) -> None:
    """vLLM's chat form: one vector for the conversation; no generation prompt and no
    extra special tokens unless asked."""
    messages = [
        {"role": "system", "content": "Represent the question for retrieval."},
        {"role": "user", "content": "What is the boiling point of water?"},
    ]
    tokenizer = embed_worker.tokenizer
    for extra, generation_prompt in (({}, False), ({"add_generation_prompt": True}, True)):
        embed_worker.received.clear()
        reply = client.post(
            "/v1/embeddings", json={"model": EMBEDDER, "messages": messages, **extra}
        )
        assert reply.status_code == 200, reply.text
        (data,) = reply.json()["data"]
        text = tokenizer.render_chat(messages, add_generation_prompt=generation_prompt)
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert embed_worker.received[0].prompt_token_ids == ids
        assert data["embedding"] == pytest.approx(fake_embedding_values(ids, None))
        assert reply.json()["usage"]["prompt_tokens"] == len(ids)


def test_an_input_may_fill_the_context_and_no_more(
    client: httpx.Client, embed_worker: FakeWorker
) -> None:
    fits = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": [1] * MAX_MODEL_LEN})
    assert fits.status_code == 200, fits.text
    too_long = client.post(
        "/v1/embeddings", json={"model": EMBEDDER, "input": [1] * (MAX_MODEL_LEN + 1)}
    )
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert f"{MAX_MODEL_LEN + 1} tokens" in error["message"]
    # -1 keeps as much of the end as the model reads.
    cut = client.post(
        "/v1/embeddings",
        json={
            "model": EMBEDDER,
            "input": list(range(1, MAX_MODEL_LEN + 11)),
            "truncate_prompt_tokens": -1,
        },
    )
    assert cut.status_code == 200, cut.text
    assert cut.json()["usage"]["prompt_tokens"] == MAX_MODEL_LEN
    assert embed_worker.received[-1].prompt_token_ids[0] == 11


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [[1, 2, 999_999]]}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        # Refused before anything is queued: the model publishes its matryoshka sizes.
        ({"input": "x", "dimensions": 4}, "dimensions"),
        ({"input": "x", "truncate_prompt_tokens": MAX_MODEL_LEN + 1}, "truncate_prompt_tokens"),
        ({"input": "x", "encoding_format": "binary"}, "encoding_format"),
        ({"input": "x", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "input": "x"}, "input"),
        ({}, "input"),
        ({"messages": []}, "messages"),
        # vLLM's base64 encodings other than what workers send: refused, not misdecoded.
        ({"input": "x", "embed_dtype": "float16"}, "embed_dtype"),
        ({"input": "x", "endianness": "big"}, "endianness"),
        # Malformed input is refused before the model is even looked up.
        ({"model": "no-such-model", "input": []}, "input"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    client: httpx.Client, embed_worker: FakeWorker, body: dict, param: str
) -> None:
    reply = client.post("/v1/embeddings", json={"model": EMBEDDER, **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert not embed_worker.received


class _BosEosTokenizer:
    """Adds BOS (1) and EOS (2) around one id per character, like many HF tokenizers."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [100 + ord(c) % 50 for c in text]
        return [1, *ids, 2] if add_special_tokens else ids


def test_truncation_keeps_the_special_tokens_around_the_text() -> None:
    tokenizer = _BosEosTokenizer()
    text = "abcdefgh"
    plain = tokenizer.encode(text, add_special_tokens=False)
    assert truncated_text_ids(tokenizer, text, True, 5) == [1, *plain[-3:], 2]  # type: ignore[arg-type]
    assert truncated_text_ids(tokenizer, text, False, 5) == plain[-5:]  # type: ignore[arg-type]
    assert truncated_text_ids(tokenizer, text, True, 50) == tokenizer.encode(text)  # type: ignore[arg-type]
    with pytest.raises(ApiError, match="no room"):
        truncated_text_ids(tokenizer, text, True, 2)  # type: ignore[arg-type]


def test_each_endpoint_refuses_the_other_kind_of_model(
    sdk: openai.OpenAI, embed_worker: FakeWorker, worker: FakeWorker
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=MODEL, input="hello")
    assert "--runner pooling" in refused.value.message
    assert refused.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=EMBEDDER, messages=[{"role": "user", "content": "hi"}])
    assert "embeds or classifies prompts" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model=EMBEDDER, prompt="hi")
    assert not embed_worker.received and not worker.received


def test_a_worker_error_is_the_answer(client: httpx.Client, embed_worker: FakeWorker) -> None:
    embed_worker.behaviour = "error"
    reply = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["a", "b"]})
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "oom"


def test_workers_of_both_kinds_for_one_model_answer_503_until_they_agree(
    stack: Stack, client: httpx.Client, embed_worker: FakeWorker
) -> None:
    with worker_on(stack, EMBEDDER, instance="embedder-2", runner="generate"):
        wait_for(lambda: client.get(f"/v1/models/{EMBEDDER}").status_code == 200)

        def mixed() -> bool:
            reply = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "x"})
            return reply.status_code == 503 and "changing" in reply.json()["error"]["message"]

        wait_for(mixed)


def test_model_may_be_left_out_while_one_model_is_served(
    make_stack: Callable[..., Stack],
) -> None:
    """As in vLLM, and as chat and completions allow: embeddings, scores, reranks and
    /invocations without `model` go to the one model served."""
    stack = make_stack(with_worker=False)
    with (
        worker_on(stack, EMBEDDER, instance="only-embedder", runner="pooling"),
        stack.client() as client,
    ):
        wait_for(lambda: client.get("/v1/models").json()["data"])
        embedded = client.post("/v1/embeddings", json={"input": ["a", "b"]})
        assert embedded.status_code == 200, embedded.text
        assert embedded.json()["model"] == EMBEDDER
        scored = client.post("/score", json={"text_1": "a", "text_2": "b"})
        assert scored.status_code == 200 and scored.json()["model"] == EMBEDDER
        ranked = client.post("/rerank", json={"query": "a", "documents": ["b", "c"]})
        assert ranked.status_code == 200 and ranked.json()["model"] == EMBEDDER
        invoked = client.post("/invocations", json={"input": "a"})
        assert invoked.status_code == 200, invoked.text
