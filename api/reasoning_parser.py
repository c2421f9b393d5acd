"""A reasoning model's thinking apart from its answer (vLLM's `--reasoning-parser`).

"deepseek_r1": DeepSeek-R1, its Qwen and Llama distills and QwQ think inside
`<think> ... </think>` before they answer, and their chat templates usually
open the `<think>` in the prompt, so the output starts inside it. Text before
`</think>` is reasoning (an opening `<think>` dropped), text after it is the
answer (its leading blank lines dropped); an output cut short before
`</think>` is all reasoning, as in vLLM. Streamed, a suffix that could begin
a tag is held back, so no fragment of one reaches either field.

"qwen3": Qwen3 opens `<think>` itself when thinking is on, its -Thinking-2507
models' templates open it in the prompt, and with `enable_thinking: false` the
template closes an empty block in the prompt. So an output is read as
reasoning only when a `<think>` is open, in the prompt or at the output's
start; otherwise it is all answer. vLLM decides that by whether `</think>`
appears at all, which a stream cannot know until the end; deciding at the
start gives the same split streamed and whole.

"olmo3": OLMo 3's Think models write the same tags, in plain text, and some of
its templates open the block in the prompt; it reads as "qwen3" does (vLLM's
olmo3 parser also starts inside a block only when one is open).

"seed_oss": Seed-OSS thinks inside `<seed:think> ... </seed:think>`, opened by
the output itself; it reads as "qwen3" does with those tags, which may be
special tokens, so requests it reads keep special tokens. Its thinking cannot
be combined with a structured-output constraint (the grammar spells `<think>`).

"openai_gptoss": gpt-oss writes harmony messages (api/harmony_parser.py): its
analysis channel is reasoning (with messages to tools the server does not run,
such as its built-in browser), its final channel and commentary preambles are
the answer. A message calling a function goes to the answer as harmony text,
for the "openai" tool-call parser to read (api/openai_tool_parser.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from api.harmony_parser import (
    CHANNEL,
    MESSAGE,
    HarmonyParser,
    harmony_reasoning_tokens,
)
from api.tool_call_json import marker_prefix_len

REASONING_PARSERS = ("deepseek_r1", "qwen3", "olmo3", "seed_oss", "openai_gptoss")
# Parsers that read an output as thinking only inside a block opened in the prompt or
# at the output's start.
THINKS_IF_OPENED = ("qwen3", "olmo3", "seed_oss")
HARMONY = "openai_gptoss"
START = "<think>"
END = "</think>"


@dataclass(frozen=True)
class ThinkTags:
    """The tags around a model's thinking."""

    open: str = START
    close: str = END


THINK = ThinkTags()
SEED_THINK = ThinkTags("<seed:think>", "</seed:think>")
# Parsers whose tags are not `<think>`'s; they may be special tokens, which
# detokenizing keeps for them.
OTHER_TAGS = {"seed_oss": SEED_THINK}
# Parsers whose thinking a structured-output grammar cannot wrap (it spells `<think>`).
UNCONSTRAINED = frozenset(OTHER_TAGS)


def think_tags(parser: str | None) -> ThinkTags:
    return OTHER_TAGS.get(parser or "", THINK)


# How much of the prompt's end `think_start` reads when the model's own turn cannot be
# told apart from the conversation (a template's thinking switch is in its last tokens).
PROMPT_TAIL_TOKENS = 32


class ThinkStart(Enum):
    """Where an output starts, as the prompt's end and the parser tell."""

    INSIDE = "inside"  # inside a think block (an opening <think> in the output dropped)
    IF_OPENED = "if_opened"  # thinking only if the output opens with <think>
    ANSWER = "answer"  # the prompt closed the think block: all answer
    HARMONY = "harmony"  # harmony messages: analysis first, if any, then the answer


def think_start(parser: str, prompt_tail: str) -> ThinkStart:
    """How an output of `parser`'s model begins after a prompt ending in `prompt_tail`."""
    if parser == HARMONY:
        return ThinkStart.HARMONY
    tags = think_tags(parser)
    start, end = prompt_tail.rfind(tags.open), prompt_tail.rfind(tags.close)
    if end > start >= 0:  # `<think></think>`: a template with thinking turned off
        return ThinkStart.ANSWER
    if parser in THINKS_IF_OPENED and start < 0:
        return ThinkStart.IF_OPENED
    return ThinkStart.INSIDE


@dataclass
class ThinkStream:
    start: ThinkStart = ThinkStart.INSIDE
    tags: ThinkTags = THINK
    opened: bool = False  # past where an opening <think> could be
    answering: bool = False  # the answer's first non-blank text went out
    pending: str = ""

    def __post_init__(self) -> None:
        self.thinking = self.start is not ThinkStart.ANSWER

    def feed(self, text: str, final: bool) -> tuple[str, str]:
        """(reasoning, answer) in this text; the whole output is the stream fed once."""
        buffer, self.pending = self.pending + text, ""
        reasoning = ""
        if self.thinking and not self.opened:
            stripped = buffer.lstrip()
            opening = self.tags.open
            if not final and opening.startswith(stripped):  # may still become <think>
                self.pending = buffer
                return "", ""
            if stripped.startswith(opening):
                buffer = stripped[len(opening) :]
            elif self.start is ThinkStart.IF_OPENED:
                self.thinking = False
            self.opened = True
        if self.thinking:
            closing = self.tags.close
            end = buffer.find(closing)
            if end < 0:
                keep = 0 if final else marker_prefix_len(buffer, closing)
                self.pending = buffer[len(buffer) - keep :]
                return buffer[: len(buffer) - keep], ""
            reasoning, buffer = buffer[:end], buffer[end + len(closing) :]
            self.thinking = False
        if not self.answering:
            buffer = buffer.lstrip()
            self.answering = bool(buffer)
        return reasoning, buffer


@dataclass
class HarmonyThinkStream:
    """openai_gptoss's split; the same `feed` as ThinkStream's. With `calls` a tool-call
    parser reads the answer: each whole call goes to it as harmony, and one the output
    stopped inside as its text alone; without, calls (which nothing will run) are
    thinking, so no marker reaches the client, as is a call the model left open to
    write another message."""

    calls: bool = True
    parser: HarmonyParser = field(default_factory=HarmonyParser)
    thoughts: int = 0  # analysis messages so far (joined by newlines)
    call: str = ""  # the open function call's body so far

    def feed(self, text: str, final: bool) -> tuple[str, str]:
        reasoning = answer = ""
        for piece in self.parser.feed(text, final):
            if piece.function is not None and self.calls and not piece.interrupted:
                self.call += piece.text
                if piece.ended:
                    header = f"{CHANNEL}{piece.channel} to={piece.recipient}{MESSAGE}"
                    answer += header + self.call + piece.end if piece.end else self.call
                    self.call = ""
            elif piece.channel == "analysis" or piece.recipient is not None:
                if piece.first and self.thoughts:
                    reasoning += "\n"
                self.thoughts += piece.first
                reasoning += piece.text
            else:
                answer += piece.text
        return reasoning, answer


def think_stream(
    start: ThinkStart, calls: bool = True, tags: ThinkTags = THINK
) -> ThinkStream | HarmonyThinkStream:
    """The stream that splits an output starting as `start` says (`calls`: harmony's,
    for a tool-call parser that reads them; `tags`: the thinking's)."""
    if start is ThinkStart.HARMONY:
        return HarmonyThinkStream(calls)
    return ThinkStream(start, tags)


def split_reasoning(
    text: str, start: ThinkStart = ThinkStart.INSIDE, calls: bool = True, tags: ThinkTags = THINK
) -> tuple[str | None, str]:
    """A whole output's (reasoning or None, answer)."""
    reasoning, answer = think_stream(start, calls, tags).feed(text, final=True)
    return reasoning or None, answer


def reasoning_token_count(
    decode: Callable[[list[int]], str],
    token_ids: list[int],
    start: ThinkStart,
    tags: ThinkTags = THINK,
) -> int:
    """How many of an output's tokens were thinking (usage's reasoning_tokens): those up
    to the one that completes `</think>`, all of them if none does, none if the output
    answered at once. Read from the tokens, since a whole answer arrives as one piece."""
    if start is ThinkStart.ANSWER or not token_ids:
        return 0
    if start is ThinkStart.HARMONY:  # `decode` keeps special tokens for harmony
        return harmony_reasoning_tokens([decode([token]) for token in token_ids])
    text = decode(token_ids)
    if start is ThinkStart.IF_OPENED and not text.lstrip().startswith(tags.open):
        return 0
    if tags.close not in text:
        return len(token_ids)
    low, high = 1, len(token_ids)  # the shortest prefix whose text holds </think>
    while low < high:
        middle = (low + high) // 2
        if tags.close in decode(token_ids[:middle]):
            high = middle
        else:
            low = middle + 1
    return low
