"""`--config FILE`: vLLM's YAML of options, as defaults the command line overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.cli import _command_parser, build_parser, main, settings_from_args
from conveyor.config_file import ConfigFileError, apply_config_file, config_path
from conveyor.settings import Settings

CONFIG = """
model: /models/qwen3
max_num_seqs: 64          # underscores or dashes, as in vLLM
port: 9100
enable-prefix-caching: false
trust-remote-code: true   # accepted, changes nothing
tensor-parallel-size: 1
override-generation-config: {temperature: 0.5, max_new_tokens: 300}
allowed-origins: ["https://chat.example"]
lora-modules: [sql=/adapters/sql, poet=/adapters/poet]
kv-cache-dtype: fp8
"""


def _settings(tmp_path: Path, text: str, *argv: str) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    args = ["serve", "--config", str(path), *argv]
    parser = build_parser()
    assert config_path(args) == str(path)
    command = _command_parser(parser, args)
    assert command is not None
    apply_config_file(command, str(path))
    return settings_from_args(parser.parse_args(args))


def test_the_files_options_reach_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path, CONFIG)
    assert settings.model == "/models/qwen3"
    assert (settings.max_num_seqs, settings.port, settings.kv_cache_dtype) == (64, 9100, "fp8")
    assert settings.enable_prefix_caching is False
    assert json.loads(settings.override_generation_config or "") == {
        "temperature": 0.5,
        "max_new_tokens": 300,
    }
    assert settings.allowed_origins == ["https://chat.example"]
    assert settings.lora_modules == ["sql=/adapters/sql", "poet=/adapters/poet"]


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, CONFIG, "/models/other", "--port", "9200", "--max-num-seqs=8")
    assert (settings.model, settings.port, settings.max_num_seqs) == ("/models/other", 9200, 8)
    assert settings.enable_prefix_caching is False  # from the file still
    assert _settings(tmp_path, CONFIG, "--enable-prefix-caching").enable_prefix_caching is True
    assert _settings(tmp_path, "").port == Settings().port  # an empty file changes nothing
    assert _settings(tmp_path, "max-model-len:\nseed: null").max_model_len is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-num-seq: 3", "unknown option 'max-num-seq'"),
        ("kv-cache-dtype: int4", "'int4' is not one of auto, fp8"),
        ("max-num-seqs: many", "max-num-seqs: invalid literal"),
        ("enforce-eager: yes please", "expected true or false"),
        ("- a\n- b", "expected a mapping"),
        ("port: [1\n", "while parsing"),
        ("chat-template: [a, b]", "takes one value, got a list"),
        ("no-enable-prefix-caching: true", "unknown option 'no-enable-prefix-caching'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message):
        _settings(tmp_path, text)


def test_the_cli_reports_a_bad_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("max-num-seq: 3\n")
    with pytest.raises(SystemExit) as exited:
        main(["serve", f"--config={path}"])
    assert exited.value.code == 2
    assert f"--config {path}: unknown option 'max-num-seq'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(tmp_path / "missing.yaml")])
    assert "No such file" in capsys.readouterr().err
