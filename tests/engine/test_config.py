"""Engine dtype defaults, and the start-up hint where bf16 would be faster on this CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.config import cpu_bf16_is_native, resolve_dtype
from engine.llm import LLM

HINT = "--dtype bfloat16 runs about 1.5x faster"


def test_default_dtypes() -> None:
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unsupported"):
        resolve_dtype("int3", torch.device("cpu"))


@pytest.mark.parametrize("dtype", [None, "bfloat16", "float32"])
def test_bf16_hint_only_for_the_default_on_a_cpu_with_native_bf16(
    make_random_model: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
    dtype: str | None,
) -> None:
    with caplog.at_level(logging.INFO, logger="engine.llm_engine"):
        LLM(str(make_random_model("llama")), dtype=dtype, num_kv_blocks=8, max_model_len=64)
    hinted = HINT in caplog.text
    assert hinted == (dtype is None and cpu_bf16_is_native())
