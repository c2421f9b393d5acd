"""The server's --default-chat-template-kwargs (under each request's chat_template_kwargs)
and --exclude-tools-when-tool-choice-none, as the prompt a worker is sent shows them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from .conftest import MODEL, Stack, sdk_client, worker_on
from .fakes import FakeWorker

# Prints what the kwargs decide, so the prompt shows which ones the template was given.
TEMPLATE = (
    "{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}"
    "{% if style is defined %}[style={{ style }}]{% endif %}"
    "{% if tools %}[tools={{ tools | length }}]{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
DEFAULTS = {"enable_thinking": False, "style": "terse"}
MESSAGES = [{"role": "user", "content": "Hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
]


@pytest.fixture()
def templated(make_stack: Callable[..., Stack]) -> Iterator[tuple[openai.OpenAI, Stack]]:
    stack = make_stack(
        chat_template=TEMPLATE,
        default_chat_template_kwargs=DEFAULTS,
        exclude_tools_when_tool_choice_none=True,
        tool_call_parser="hermes",
    )
    with sdk_client(stack) as client:
        yield client, stack


def last_prompt(worker: FakeWorker) -> str:
    return worker.tokenizer.decode(worker.received[-1].prompt_token_ids, skip_special_tokens=False)


def test_the_defaults_lie_under_the_requests_kwargs(
    templated: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = templated
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert last_prompt(stack.worker) == "[no-think][style=terse]<user>Hi<assistant>"
    # The request wins key by key: its own switch, the server's style.
    client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    assert last_prompt(stack.worker) == "[style=terse]<user>Hi<assistant>"
    client.responses.create(model=MODEL, input="Hi", max_output_tokens=16)
    assert last_prompt(stack.worker).startswith("[no-think][style=terse]<user>Hi")


def test_tokenize_counts_what_the_chat_request_would_send(
    templated: tuple[openai.OpenAI, Stack],
) -> None:
    client, stack = templated
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    sent = stack.worker.received[-1].prompt_token_ids
    with stack.client() as http:
        counted = http.post("/tokenize", json={"model": MODEL, "messages": MESSAGES})
        assert counted.status_code == 200, counted.text
        assert counted.json()["tokens"] == sent
        own = http.post(
            "/tokenize",
            json={
                "model": MODEL,
                "messages": MESSAGES,
                "chat_template_kwargs": {"style": "long"},
            },
        )
    text = stack.worker.tokenizer.decode(own.json()["tokens"], skip_special_tokens=False)
    assert text == "[no-think][style=long]<user>Hi<assistant>"


def test_tool_choice_none_leaves_the_tools_out(templated: tuple[openai.OpenAI, Stack]) -> None:
    client, stack = templated
    stack.worker.set_script("It is sunny.")
    client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=2)
    assert "[tools=1]" in last_prompt(stack.worker)  # auto: the model may call it
    client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=2
    )
    assert "[tools=" not in last_prompt(stack.worker)


def test_without_the_flag_tool_choice_none_still_shows_the_tools(
    make_stack: Callable[..., Stack],
) -> None:
    """OpenAI's behaviour (and vLLM's default): the model sees tools it may not call."""
    stack = make_stack(chat_template=TEMPLATE)
    with stack.client() as http:
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": MESSAGES,
                "tools": TOOLS,
                "tool_choice": "none",
                "max_tokens": 2,
            },
        )
    assert response.status_code == 200, response.text
    assert last_prompt(stack.worker) == "[tools=1]<user>Hi<assistant>"


def test_a_reserved_default_is_refused_at_start(make_stack: Callable[..., Stack]) -> None:
    with pytest.raises(ValueError, match=r"default-chat-template-kwargs may not set \['tools'\]"):
        make_stack(default_chat_template_kwargs={"tools": []})


def test_the_flag_reaches_the_request_as_json(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(chat_template=TEMPLATE, default_chat_template_kwargs='{"style": "x"}')
    with stack.client() as http:
        response: httpx.Response = http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
        )
    assert response.status_code == 200, response.text
    assert last_prompt(stack.worker) == "[style=x]<user>Hi<assistant>"


def test_pooling_conversations_get_the_defaults_too(
    templated: tuple[openai.OpenAI, Stack],
) -> None:
    """/v1/embeddings, /classify and /pooling render `messages` with the same defaults."""
    _, stack = templated
    with (
        worker_on(stack, "fake-embedder", instance="emb-t", runner="pooling") as embedder,
        worker_on(
            stack, "fake-labels", instance="cls-t", runner="pooling", labels=("a", "b")
        ) as labels,
        stack.client() as http,
    ):
        for path, model, worker in (
            ("/v1/embeddings", "fake-embedder", embedder),
            ("/pooling", "fake-embedder", embedder),
            ("/classify", "fake-labels", labels),
            ("/pooling", "fake-labels", labels),
        ):
            reply = http.post(path, json={"model": model, "messages": MESSAGES})
            assert reply.status_code == 200, (path, reply.text)
            assert last_prompt(worker) == "[no-think][style=terse]<user>Hi", path


@pytest.mark.parametrize("name", ["tools", "add_generation_prompt", "messages"])
def test_kwargs_that_would_collide_with_the_call_are_a_400(
    templated: tuple[openai.OpenAI, Stack], name: str
) -> None:
    _, stack = templated
    kwargs = {name: True}
    with stack.client() as http:
        for path, body in (
            ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}),
            ("/tokenize", {"model": MODEL, "messages": MESSAGES}),
        ):
            reply = http.post(path, json={**body, "chat_template_kwargs": kwargs})
            assert reply.status_code == 400, (path, reply.text)
            assert reply.json()["error"]["param"] == "chat_template_kwargs", path


PARTS_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>"
    "{% if m.content is string %}(string){{ m.content }}"
    "{% else %}{% for p in m.content %}[{{ p.type }}:{{ p.text }}]{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.mark.parametrize(
    ("content_format", "expected"),
    [
        ("openai", "<system>[text:Be brief.]<user>[text:Hi][text:there]<assistant>"),
        ("string", "<system>(string)Be brief.<user>(string)Hi\nthere<assistant>"),
        ("auto", "<system>(string)Be brief.<user>(string)Hi\nthere<assistant>"),
    ],
)
def test_the_content_format_is_how_the_template_gets_message_content(
    make_stack: Callable[..., Stack], content_format: str, expected: str
) -> None:
    """vLLM's --chat-template-content-format: openai hands the template a list of text
    parts (a string as one part), string (and auto) the text parts joined."""
    stack = make_stack(chat_template=PARTS_TEMPLATE, chat_template_content_format=content_format)
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
        },
    ]
    with stack.client() as http:
        body = {"model": MODEL, "messages": messages, "max_tokens": 2}
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert last_prompt(stack.worker) == expected
