"""--lora-modules entries: vLLM's name=path and JSON forms, and the mistakes they can hold."""

from __future__ import annotations

import pytest

from engine.lora_config import LoRAConfig, LoRAConfigError, LoRAModule


def test_both_spellings_parse() -> None:
    assert LoRAModule.parse("sql=/ads/sql") == LoRAModule("sql", "/ads/sql")
    entry = '{"name": "sql", "path": "/ads/sql", "base_model_name": "llama"}'
    assert LoRAModule.parse(entry) == LoRAModule("sql", "/ads/sql", "llama")
    config = LoRAConfig.from_entries(["a=/x", {"name": "b", "path": "/y"}], max_lora_rank=64)
    assert [m.name for m in config.modules] == ["a", "b"] and config.max_lora_rank == 64


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("just-a-name", "expected name=path"),
        ("=/path", "expected name=path"),
        ("{not json", "not JSON"),
        ('{"name": "a", "path": "/x", "rank": 8}', "unknown --lora-modules keys: rank"),
        ('{"name": "a b", "path": "/x"}', "invalid adapter name 'a b'"),
        ('{"name": "a", "path": ""}', "path must be a non-empty string"),
        ('{"name": "a", "path": "/x", "base_model_name": 3}', "base_model_name must be"),
        ("[1]", "expected name=path"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry: str, message: str) -> None:
    with pytest.raises(LoRAConfigError, match=message):
        LoRAModule.parse(entry)


def test_the_set_of_adapters_is_checked() -> None:
    with pytest.raises(LoRAConfigError, match="unique: a"):
        LoRAConfig.from_entries(["a=/x", "a=/y"], 16)
    with pytest.raises(LoRAConfigError, match="at least one adapter"):
        LoRAConfig((), 16)
    with pytest.raises(LoRAConfigError, match="max_lora_rank must be at least 1"):
        LoRAConfig.from_entries(["a=/x"], 0)
    with pytest.raises(LoRAConfigError, match="2 --lora-modules exceed --max-cpu-loras 1"):
        LoRAConfig.from_entries(["a=/x", "b=/y"], 16, max_loaded=1)
    # With runtime updates, none need be given at start-up.
    assert LoRAConfig.from_entries([], 16, runtime_updates=True).modules == ()
