"""gpt-oss's harmony messages: channels read as they stream, and the reasoning split."""

from __future__ import annotations

import pytest

from api.harmony_parser import HarmonyParser, harmony_reasoning_tokens
from api.reasoning_parser import ThinkStart, split_reasoning, think_start, think_stream

from .test_reasoning_parser import streamed

THOUGHT = "The user asks for the weather. I should call get_weather."
ANSWER = "It is sunny in Paris, 21 °C."
ANALYSIS = f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
FINAL = f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
CALL = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city": "Paris"}<|call|>'
)


def bodies(pieces_of_text: list[str]) -> list[tuple[str, str | None, str, str]]:
    """(channel, recipient, body, end) per message, fed piece by piece."""
    parser = HarmonyParser()
    messages: list[tuple[str, str | None, str, str]] = []
    body = ""
    for i, text in enumerate(pieces_of_text):
        for piece in parser.feed(text, final=i == len(pieces_of_text) - 1):
            body += piece.text
            if piece.ended:
                messages.append((piece.channel, piece.recipient, body, piece.end))
                body = ""
    return messages


def cuts(text: str) -> list[list[str]]:
    """The text whole, split in two at every point, and one character at a time."""
    return [[text], *([text[:i], text[i:]] for i in range(1, len(text))), list(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ANALYSIS + FINAL,
            [("analysis", None, THOUGHT, "<|end|>"), ("final", None, ANSWER, "<|return|>")],
        ),
        (
            ANALYSIS + CALL,
            [
                ("analysis", None, THOUGHT, "<|end|>"),
                ("commentary", "functions.get_weather", '{"city": "Paris"}', "<|call|>"),
            ],
        ),
        # The recipient may stand before the channel, in the role's part of the header.
        (
            "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>",
            [("commentary", "functions.f", "{}", "<|call|>")],
        ),
        # Cut short (max_tokens) inside the thinking: the body so far, ended by nothing.
        (f"<|channel|>analysis<|message|>{THOUGHT}", [("analysis", None, THOUGHT, "")]),
        # ... or inside a header: nothing of it is a body.
        (ANALYSIS + "<|start|>assistant<|chan", [("analysis", None, THOUGHT, "<|end|>")]),
        # A model answering plainly: one final message.
        (ANSWER, [("final", None, ANSWER, "")]),
        # Whitespace between messages (or after the last) belongs to none.
        (
            ANALYSIS + "\n" + FINAL + "\n",
            [("analysis", None, THOUGHT, "<|end|>"), ("final", None, ANSWER, "<|return|>")],
        ),
        # A plain answer followed by a call (as the reasoning split passes them on): the
        # call's header ends the answer.
        (
            "Let me check." + CALL.removeprefix("<|start|>assistant"),
            [
                ("final", None, "Let me check.", ""),
                ("commentary", "functions.get_weather", '{"city": "Paris"}', "<|call|>"),
            ],
        ),
        # Text starting like a marker that never becomes a header is plain text.
        ("<|im_start|>hi", [("final", None, "<|im_start|>hi", "")]),
        # Text that merely looks like a marker's start is a body's text.
        (
            "<|channel|>final<|message|>a <| b <|en c<|return|>",
            [("final", None, "a <| b <|en c", "<|return|>")],
        ),
    ],
)
def test_messages_read_alike_however_the_text_arrives(
    text: str, expected: list[tuple[str, str | None, str, str]]
) -> None:
    for pieces in cuts(text):
        assert bodies(pieces) == expected, pieces


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        (ANALYSIS + FINAL, THOUGHT, ANSWER),
        # Two analysis messages are one reasoning, a line apart; a commentary preamble
        # is the user's to read.
        (
            ANALYSIS
            + "<|start|>assistant<|channel|>analysis<|message|>Done.<|end|>"
            + "<|start|>assistant<|channel|>commentary<|message|>Checking. <|end|>"
            + FINAL,
            f"{THOUGHT}\nDone.",
            f"Checking. {ANSWER}",
        ),
        # A function call goes to the answer as harmony, for the tool-call parser.
        (
            ANALYSIS + CALL,
            THOUGHT,
            '<|channel|>commentary to=functions.get_weather<|message|>{"city": "Paris"}<|call|>',
        ),
        # A call to a tool the server does not run (gpt-oss's browser) is thinking.
        (
            ANALYSIS
            + "<|start|>assistant<|channel|>analysis to=browser.search<|message|>q<|call|>",
            f"{THOUGHT}\nq",
            "",
        ),
        (f"<|channel|>analysis<|message|>{THOUGHT}", THOUGHT, ""),
        # A call the output stopped inside (max_tokens) is its text alone.
        (ANALYSIS + CALL[: CALL.index("}")], THOUGHT, '{"city": "Paris"'),
        (ANSWER, "", ANSWER),
    ],
)
def test_the_analysis_channel_is_the_reasoning(text: str, reasoning: str, answer: str) -> None:
    assert think_start("openai_gptoss", "<|start|>assistant") is ThinkStart.HARMONY
    assert split_reasoning(text, ThinkStart.HARMONY) == (reasoning or None, answer)
    for pieces in cuts(text):
        assert streamed(pieces, ThinkStart.HARMONY) == (reasoning, answer), pieces


def test_a_preamble_and_a_call_reach_the_tool_parser_apart() -> None:
    """Commentary before a call is content, the call a call, whole or streamed; without
    a tool-call parser the call is thinking, so no marker reaches the client."""
    from api.openai_tool_parser import OpenAIToolStream
    from api.tool_parsers import parse_tool_calls

    preamble = "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
    text = ANALYSIS + preamble + CALL
    reasoning, answer = split_reasoning(text, ThinkStart.HARMONY)
    parsed = parse_tool_calls("openai", answer)
    assert (reasoning, parsed.content) == (THOUGHT, "Let me check.")
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["get_weather"]
    for pieces in (list(text), [text[:40], text[40:90], text[90:]]):
        split, tools = think_stream(ThinkStart.HARMONY), OpenAIToolStream()
        content, calls = "", []
        for i, piece in enumerate(pieces):
            final = i == len(pieces) - 1
            fields, _ = tools.feed(split.feed(piece, final)[1], final)
            content += fields.get("content", "")
            calls += fields.get("tool_calls", [])
        assert content == "Let me check." and len(calls) == 1
    reasoning, answer = split_reasoning(text, ThinkStart.HARMONY, calls=False)
    assert answer == "Let me check." and "<|" not in (reasoning or "")
    assert reasoning == f'{THOUGHT}\n{{"city": "Paris"}}'
    # A call the model left open to write another message is no call: thinking.
    open_call = CALL.removesuffix("<|call|>") + FINAL
    reasoning, answer = split_reasoning(open_call, ThinkStart.HARMONY)
    assert (reasoning, answer) == ('{"city": "Paris"}', ANSWER)
    assert parse_tool_calls("openai", answer).tool_calls == []


def test_reasoning_tokens_are_those_before_the_first_message_off_analysis() -> None:
    thought = ["<|channel|>", "analysis", "<|message|>", "I", " think", "<|end|>"]
    answer = ["<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "Yes", "<|return|>"]
    assert harmony_reasoning_tokens(thought + answer) == len(thought)
    assert harmony_reasoning_tokens(thought) == len(thought)  # all thinking
    assert harmony_reasoning_tokens(answer[2:]) == 0  # answered at once
    assert harmony_reasoning_tokens(["Plain", " answer"]) == 0
    # An analysis message the model left open: the next message's <|start|> ends it.
    assert harmony_reasoning_tokens(thought[:-1] + answer) == len(thought) - 1
