"""Engine fixtures: the bundled model loaded once (tiny random models: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.llm import LLM


@pytest.fixture(scope="session")
def bundled_llm(bundled_model_dir: Path) -> LLM:
    """The bundled SmolLM2 with default engine settings, shared by read-only tests."""
    return LLM(str(bundled_model_dir))
