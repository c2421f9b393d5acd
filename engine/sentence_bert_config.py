"""The longest input a sentence-transformers model was trained on.

`sentence_bert_config.json`'s `max_seq_length` is often shorter than the
encoder's position table (all-MiniLM-L6-v2: 256 of 512): sentence-transformers
truncates there, and vLLM takes it as the model's context. So do we, so that
longer inputs are refused (or cut by `truncate_prompt_tokens`) rather than
embedded past what the model learned.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.configuration_error import ConfigurationError

FILE_NAME = "sentence_bert_config.json"


def max_seq_length(folder: Path) -> int | None:
    """The folder's `max_seq_length`, or None where it states none."""
    path = folder / FILE_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigurationError(f"{path}: not valid JSON: {exc}") from None
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{path}: max_seq_length must be a positive integer")
    return value
