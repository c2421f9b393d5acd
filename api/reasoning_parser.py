"""A reasoning model's thinking apart from its answer (vLLM's `--reasoning-parser`).

"deepseek_r1": DeepSeek-R1, its Qwen and Llama distills and QwQ think inside
`<think> ... </think>` before they answer, and their chat templates usually
open the `<think>` in the prompt, so the output starts inside it. Text before
`</think>` is reasoning (an opening `<think>` dropped), text after it is the
answer (its leading blank lines dropped); an output cut short before
`</think>` is all reasoning, as in vLLM. Streamed, a suffix that could begin
a tag is held back, so no fragment of one reaches either field.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.tool_call_json import marker_prefix_len

REASONING_PARSERS = ("deepseek_r1",)
START = "<think>"
END = "</think>"
# How much of the prompt's end `closes_thinking` reads (a template's thinking switch is
# in its last few tokens).
PROMPT_TAIL_TOKENS = 32


def closes_thinking(prompt_tail: str) -> bool:
    """Whether the prompt itself closed the think block (`<think></think>`: a template
    with thinking turned off, e.g. enable_thinking false), so the output is all answer."""
    return prompt_tail.rfind(END) > prompt_tail.rfind(START) >= 0


@dataclass
class ThinkStream:
    thinking: bool = True
    opened: bool = False  # past where an opening <think> could be
    answering: bool = False  # the answer's first non-blank text went out
    pending: str = ""

    def feed(self, text: str, final: bool) -> tuple[str, str]:
        """(reasoning, answer) in this text; the whole output is the stream fed once."""
        buffer, self.pending = self.pending + text, ""
        reasoning = ""
        if self.thinking:
            if not self.opened:
                stripped = buffer.lstrip()
                if not final and START.startswith(stripped):  # may still become <think>
                    self.pending = buffer
                    return "", ""
                buffer = stripped[len(START) :] if stripped.startswith(START) else buffer
                self.opened = True
            end = buffer.find(END)
            if end < 0:
                keep = 0 if final else marker_prefix_len(buffer, END)
                self.pending = buffer[len(buffer) - keep :]
                return buffer[: len(buffer) - keep], ""
            reasoning, buffer = buffer[:end], buffer[end + len(END) :]
            self.thinking = False
        if not self.answering:
            buffer = buffer.lstrip()
            self.answering = bool(buffer)
        return reasoning, buffer


def split_reasoning(text: str, thinking: bool = True) -> tuple[str | None, str]:
    """A whole output's (reasoning or None, answer); `thinking` False: the prompt closed
    the think block, so all of it is answer."""
    reasoning, answer = ThinkStream(thinking=thinking).feed(text, final=True)
    return reasoning or None, answer
