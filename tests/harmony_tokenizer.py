"""A tokenizer for gpt-oss test models: the bundled one plus harmony's special tokens."""

from __future__ import annotations

import json
from pathlib import Path

# gpt-oss's harmony markers (api/harmony_parser.py), special tokens of its tokenizer.
HARMONY_TOKENS = (
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|return|>",
    "<|call|>",
)
# Harmony's layout of a conversation, cut down: a system message saying how hard to
# reason (as gpt-oss's template writes `reasoning_effort`), each message as a header
# and a body (an assistant's `thinking` as an analysis message before it, as gpt-oss's
# template writes a tool-calling turn's), the model's turn opened at the end.
HARMONY_TEMPLATE = (
    "<|start|>system<|message|>Reasoning: {{ reasoning_effort | default('medium') }}<|end|>"
    "{% for m in messages %}"
    "{% if m.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>"
    "{% endif %}"
    "<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)


def with_harmony_tokens(folder: Path) -> None:
    """Give the tokenizer in `folder` the harmony markers as special tokens (after its
    own 49152) and a harmony chat template; <|return|> and <|call|> end a generation."""
    import transformers  # heavy: only the tests that build such a tokenizer load it

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": list(HARMONY_TOKENS)})
    tokenizer.chat_template = HARMONY_TEMPLATE
    tokenizer.save_pretrained(folder)
    ends = tokenizer.convert_tokens_to_ids(["<|return|>", "<|call|>"])
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}))
