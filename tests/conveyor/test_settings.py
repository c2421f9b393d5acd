"""Flags override env vars; children of `conveyor serve` inherit explicit settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.cli import build_parser, settings_from_args
from conveyor.launcher import settings_env
from conveyor.settings import Settings
from engine.sampling_params import LOGPROBS_MODES
from engine.speculative_config import SpeculativeConfig


def test_flags_beat_env_and_env_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_MAX_NUM_SEQS", "7")
    monkeypatch.setenv("CONVEYOR_PORT", "9001")
    args = build_parser().parse_args(["serve", "--port", "9100", "--no-enable-prefix-caching"])
    settings = settings_from_args(args)
    assert settings.port == 9100
    assert settings.max_num_seqs == 7
    assert settings.enable_prefix_caching is False
    assert settings.engine_config().max_num_seqs == 7


def test_enforce_eager_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).engine_config().enforce_eager is False
    flagged = settings_from_args(parser.parse_args(["worker", "--enforce-eager"]))
    assert flagged.engine_config().enforce_eager is True
    monkeypatch.setenv("CONVEYOR_ENFORCE_EAGER", "true")
    assert settings_from_args(parser.parse_args(["serve"])).engine_config().enforce_eager is True


def test_cpu_threads_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).engine_config().cpu_threads is None
    settings = settings_from_args(parser.parse_args(["serve", "--cpu-threads", "3"]))
    assert settings.engine_config().cpu_threads == 3
    monkeypatch.setenv("CONVEYOR_CPU_THREADS", "0")
    with pytest.raises(ValidationError, match="cpu_threads"):
        Settings()


def test_kv_cache_dtype_reaches_the_worker_and_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert (
        settings_from_args(parser.parse_args(["worker"])).engine_config().kv_cache_dtype == "auto"
    )
    settings = settings_from_args(parser.parse_args(["serve", "--kv-cache-dtype", "fp8"]))
    assert settings.engine_config().kv_cache_dtype == "fp8"
    assert settings_env(settings)["CONVEYOR_KV_CACHE_DTYPE"] == "fp8"
    monkeypatch.setenv("CONVEYOR_KV_CACHE_DTYPE", "fp8_e5m2")
    assert Settings().engine_config().kv_cache_dtype == "fp8_e5m2"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--kv-cache-dtype", "int8"])
    with pytest.raises(ValidationError, match="kv_cache_dtype"):
        Settings(kv_cache_dtype="fp4")


def test_logprobs_mode_reaches_the_worker_and_the_engine() -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).engine_config().logprobs_mode == (
        "raw_logprobs"
    )
    settings = settings_from_args(
        parser.parse_args(["serve", "--logprobs-mode", "processed_logprobs"])
    )
    assert settings.engine_config().logprobs_mode == "processed_logprobs"
    assert settings_env(settings)["CONVEYOR_LOGPROBS_MODE"] == "processed_logprobs"
    assert tuple(Settings.choices("logprobs_mode")) == LOGPROBS_MODES  # one list of modes
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--logprobs-mode", "final_logprobs"])


def test_quantization_reaches_the_worker_and_the_engine() -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).engine_config().quantization is None
    settings = settings_from_args(parser.parse_args(["serve", "--quantization", "fp8"]))
    assert settings.engine_config().quantization == "fp8"
    assert settings_env(settings)["CONVEYOR_QUANTIZATION"] == "fp8"
    short = settings_from_args(parser.parse_args(["worker", "-q", "fp8"]))  # vLLM's alias
    assert short.engine_config().quantization == "fp8"
    own = settings_from_args(parser.parse_args(["serve", "--quantization", "awq_marlin"]))
    assert own.engine_config().quantization == "awq_marlin"  # the checkpoint's own format
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--quantization", "bitsandbytes"])


def test_speculative_config_reaches_the_engine_and_a_bad_one_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    assert (
        settings_from_args(parser.parse_args(["worker"])).engine_config().speculative_config is None
    )
    flag = '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5}'
    settings = settings_from_args(parser.parse_args(["serve", "--speculative-config", flag]))
    assert settings.engine_config().speculative_config == SpeculativeConfig(
        num_speculative_tokens=3, prompt_lookup_max=5, prompt_lookup_min=2
    )
    assert settings_env(settings)["CONVEYOR_SPECULATIVE_CONFIG"] == flag  # reaches the worker
    with pytest.raises(ValidationError, match="eagle"):
        Settings(speculative_config='{"method": "eagle"}')
    with pytest.raises(ValidationError, match="method 'eagle' is not supported"):
        Settings(speculative_config='{"method": "eagle", "model": "org/draft"}')


def test_settings_env_round_trips_explicit_values() -> None:
    settings = Settings(api_key="sk-test", max_model_len=512, instance_id="me", port=8123)
    env = settings_env(settings)
    assert env["CONVEYOR_API_KEY"] == '["sk-test"]'
    assert env["CONVEYOR_MAX_MODEL_LEN"] == "512"
    assert "CONVEYOR_INSTANCE_ID" not in env  # each child names itself
    assert Settings(**{k.removeprefix("CONVEYOR_").lower(): v for k, v in env.items()}) == Settings(
        api_key="sk-test", max_model_len=512, port=8123
    )


def test_data_dir_expands_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DATA_DIR", "~/somewhere")
    assert "~" not in str(Settings().data_dir)


def test_the_tool_call_parser_reaches_the_api_of_conveyor_serve() -> None:
    """vLLM's pair of flags; the parser alone enables tool_choice "auto", the enable flag
    without a parser is a start-up error, not a silently disabled feature."""
    parser = build_parser()
    args = ["serve", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    settings = settings_from_args(parser.parse_args(args))
    assert settings.tool_call_parser == "hermes"
    assert settings_env(settings)["CONVEYOR_TOOL_CALL_PARSER"] == "hermes"
    with pytest.raises(ValueError, match="needs --tool-call-parser"):
        settings_from_args(parser.parse_args(["api", "--enable-auto-tool-choice"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["api", "--tool-call-parser", "kimi_k2"])
    reasoning = settings_from_args(
        parser.parse_args(["serve", "--enable-reasoning", "--reasoning-parser", "deepseek_r1"])
    )
    assert settings_env(reasoning)["CONVEYOR_REASONING_PARSER"] == "deepseek_r1"
    with pytest.raises(ValueError, match="needs --reasoning-parser"):
        settings_from_args(parser.parse_args(["api", "--enable-reasoning"]))


def test_lora_modules_reach_the_worker_of_conveyor_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's flags: --lora-modules alone enables LoRA, --enable-lora without adapters is a
    start-up error (adapters are not loaded at run time), and a bad entry stops start-up."""
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).engine_config().lora_config is None
    args = ["serve", "--enable-lora", "--max-lora-rank", "32", "--lora-modules", "sql=/a"]
    args.append('{"name": "poet", "path": "/b", "base_model_name": "smol"}')
    settings = settings_from_args(parser.parse_args(args))
    config = settings.engine_config().lora_config
    assert config is not None and config.max_lora_rank == 32
    assert [(m.name, m.path, m.base_model_name) for m in config.modules] == [
        ("sql", "/a", None),
        ("poet", "/b", "smol"),
    ]
    # vLLM's adapter-cache flags are accepted (every adapter stays resident here).
    vllm_args = ["worker", "--lora-modules", "sql=/a", "--max-loras", "2", "--max-cpu-loras", "4"]
    assert settings_from_args(parser.parse_args(vllm_args)).engine_config().lora_config
    with pytest.raises(ValueError, match="--enable-lora needs --lora-modules"):
        settings_from_args(parser.parse_args(["worker", "--enable-lora"]))
    with pytest.raises(ValueError, match="expected name=path"):
        settings_from_args(parser.parse_args(["worker", "--lora-modules", "sql"]))
    for key, value in settings_env(settings).items():  # what the worker process reads
        monkeypatch.setenv(key, value)
    assert Settings().engine_config().lora_config == config
    # vLLM's JSON entries may also come as objects in the env var's JSON list.
    monkeypatch.setenv("CONVEYOR_LORA_MODULES", '[{"name": "sql", "path": "/a"}, "poet=/b"]')
    assert [m.name for m in Settings().engine_config().lora_config.modules] == ["sql", "poet"]


def test_runtime_lora_updating_is_vllms_switch_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flag, our env var and vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING all turn it on; then
    the engine gets LoRA layers even with no adapter at start-up."""
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["api"])).allow_runtime_lora_updating is False
    flagged = settings_from_args(parser.parse_args(["serve", "--allow-runtime-lora-updating"]))
    config = flagged.engine_config().lora_config
    assert config is not None and config.runtime_updates and config.modules == ()
    assert settings_env(flagged)["CONVEYOR_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    settings_from_args(
        parser.parse_args(["worker", "--enable-lora", "--allow-runtime-lora-updating"])
    )
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    assert Settings().allow_runtime_lora_updating is True


def test_runner_flags_reach_the_worker_of_conveyor_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's three spellings of "serve embeddings", and its pooler-config flag (old name
    too); contradictions and bad pooler configs stop start-up."""
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["worker"])).engine_config().runner == "auto"
    for flags in (["--runner", "pooling"], ["--convert", "embed"], ["--task", "embedding"]):
        settings = settings_from_args(parser.parse_args(["worker", *flags]))
        assert settings.engine_config().runner == "pooling", flags
    older = ["serve", "--runner", "pooling", "--override-pooler-config", '{"pooling_type": "MEAN"}']
    settings = settings_from_args(parser.parse_args(older))
    assert settings.engine_config().pooler_config == '{"pooling_type": "MEAN"}'
    for key, value in settings_env(settings).items():  # what the worker process reads
        monkeypatch.setenv(key, value)
    assert Settings().engine_config().runner == "pooling"
    assert Settings().engine_config().pooler_config == '{"pooling_type": "MEAN"}'
    with pytest.raises(ValueError, match="contradict"):
        settings_from_args(parser.parse_args(["worker", "--runner", "generate", "--task", "embed"]))
    with pytest.raises(ValueError, match="not one of"):
        settings_from_args(parser.parse_args(["worker", "--pooler-config", '{"pooling_type": 1}']))


def test_a_vllm_serve_command_line_runs_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags vLLM users pass that ask for what conveyor always does are accepted, and change
    nothing; the ones conveyor implements reach the engine and the API."""
    parser = build_parser()
    argv = [
        "serve",
        "model-dir",
        "--trust-remote-code",
        "-tp",
        "1",
        "--pipeline-parallel-size",
        "1",
        "--disable-log-requests",
        "--enable-chunked-prefill",
        "--enable-prompt-tokens-details",
        "--swap-space",
        "4",
        "--max-seq-len-to-capture",
        "8192",
        "--distributed-executor-backend",
        "mp",
        "--guided-decoding-backend",
        "xgrammar",
        "--load-format",
        "safetensors",
        "--tokenizer-mode",
        "auto",
        "--chat-template-content-format",
        "string",
        "--disable-custom-all-reduce",
        "--async-scheduling",
        "--enable-expert-parallel",
        "--disable-frontend-multiprocessing",
        "--preemption-mode",
        "recompute",
        "--compilation-config",
        '{"level": 3}',
        "-O3",
        "--limit-mm-per-prompt",
        '{"image": 0, "video": 0}',
        "--mm-processor-kwargs",
        '{"max_pixels": 1003520}',
        "--mm-processor-cache-gb",
        "0",
        "--disable-mm-preprocessor-cache",
        "--allowed-local-media-path",
        "/data",
        "--disable-uvicorn-access-log",
        "-asc",
        "2",
        "--tokenizer-revision",
        "v1",
        "--max-logprobs",
        "5",
        "--num-gpu-blocks-override",
        "64",
        "--hf-overrides",
        '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}',
        "--generation-config",
        "vllm",
        "--override-generation-config",
        '{"temperature": 0.5, "max_new_tokens": 256}',
        "--allowed-origins",
        '["https://chat.example"]',
        "--allowed-methods",
        "GET,POST",
        "--allow-credentials",
        "--root-path",
        "/llm",
        "--uvicorn-log-level",
        "warning",
        "--disable-fastapi-docs",
        "--disable-log-stats",
        "--return-tokens-as-token-ids",
        "--enable-force-include-usage",
        "--enable-log-requests",
        "--max-log-len",
        "100",
        "--response-role",
        "bot",
        "--served-model-name",
        "qwen3",
        "gpt-4o-mini",
        "assistant",
        "--tokenizer",
        "org/tokenizer",
        "--revision",
        "v2",
        "--download-dir",
        "/models/hub",
        "--default-chat-template-kwargs",
        '{"enable_thinking": false}',
        "--exclude-tools-when-tool-choice-none",
        "--enable-request-id-headers",
        "--long-prefill-token-threshold",
        "1k",
    ]
    settings = settings_from_args(parser.parse_args(argv))
    plain = settings_from_args(parser.parse_args(["serve", "model-dir"])).engine_config()
    engine = settings.engine_config()
    assert (engine.tokenizer, engine.revision) == ("org/tokenizer", "v2")
    assert engine.tokenizer_revision == "v1" and settings.disable_uvicorn_access_log
    assert settings.api_server_count == 2 and settings.response_role == "bot"
    assert engine.served_model_name == "qwen3"
    assert settings.served_model_aliases == ["gpt-4o-mini", "assistant"]
    assert engine.download_dir == Path("/models/hub")
    assert engine.hf_overrides == {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    unchanged = dict(
        long_prefill_token_threshold=0,
        hf_overrides=None,
        max_logprobs=20,
        num_kv_blocks=None,
        tokenizer=None,
        revision=None,
        tokenizer_revision=None,
        served_model_name=None,
    )
    assert dataclasses.replace(engine, download_dir=None, **unchanged) == plain
    assert (engine.max_logprobs, engine.num_kv_blocks) == (5, 64)
    assert settings.allowed_origins == ["https://chat.example"]
    assert settings.allowed_methods == ["GET", "POST"]
    assert settings.allow_credentials and settings.disable_fastapi_docs
    assert (settings.root_path, settings.uvicorn_log_level) == ("/llm", "warning")
    assert settings.enable_log_requests and settings.max_log_len == 100
    assert settings.return_tokens_as_token_ids and settings.enable_force_include_usage
    assert settings.default_chat_template_kwargs == {"enable_thinking": False}
    assert settings.exclude_tools_when_tool_choice_none
    assert engine.long_prefill_token_threshold == 1000
    for key, value in settings_env(settings).items():  # what the children of `serve` read
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_a_mistral_model_cards_command_line_runs_reading_the_hf_files() -> None:
    """`vllm serve mistralai/... --tokenizer-mode mistral --config-format mistral
    --load-format mistral`, as Mistral's model cards give it, and chunked prefill turned
    off: accepted, and the engine is configured as without them."""
    parser = build_parser()
    mistral = [
        "--tokenizer-mode",
        "mistral",
        "--config-format",
        "mistral",
        "--load-format",
        "mistral",
        "--no-enable-chunked-prefill",
    ]
    flagged = settings_from_args(parser.parse_args(["serve", "model-dir", *mistral]))
    plain = settings_from_args(parser.parse_args(["serve", "model-dir"]))
    assert flagged.engine_config() == plain.engine_config()
    assert flagged == plain
    with pytest.raises(SystemExit):  # still refused: a format conveyor has no reader for
        parser.parse_args(["serve", "--load-format", "tensorizer"])


def test_what_conveyor_cannot_do_stops_start_up_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    with pytest.raises(ValueError, match="one device"):
        settings_from_args(parser.parse_args(["serve", "-tp", "2"]))
    with pytest.raises(ValueError, match="one device"):
        settings_from_args(parser.parse_args(["worker", "--pipeline-parallel-size", "2"]))
    with pytest.raises(ValueError, match="pins one GPU"):
        settings_from_args(parser.parse_args(["serve", "-dp", "2", "--device", "cuda:1"]))
    with pytest.raises(ValueError, match="--ssl-keyfile needs --ssl-certfile"):
        Settings(ssl_keyfile="key.pem")
    assert Settings(ssl_certfile="~/both.pem").ssl_certfile == str(Path.home() / "both.pem")
    with pytest.raises(ValueError, match="it takes temperature"):
        Settings(override_generation_config='{"temp": 0.5}')
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--distributed-executor-backend", "threads"])
    # The CLI says so in one line per problem, not a traceback.
    from conveyor.cli import main

    assert main(["serve", "--max-logprobs", "-2", "-tp", "3"]) == 2
    printed = capsys.readouterr().err.splitlines()
    assert any(line.startswith("conveyor: error: --max-logprobs: ") for line in printed)


def test_the_model_may_come_as_vllm_api_servers_model_flag() -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["serve", "--model", "/m"])).model == "/m"
    both = parser.parse_args(["serve", "/positional", "--model", "/flag"])
    assert settings_from_args(both).model == "/positional"
    with pytest.raises(SystemExit):  # what conveyor cannot read is not accepted silently
        parser.parse_args(["serve", "--load-format", "dummy"])
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--chat-template-content-format", "list"])
    openai = parser.parse_args(["serve", "--chat-template-content-format", "openai"])
    assert settings_from_args(openai).chat_template_content_format == "openai"


def test_a_model_swallowed_by_served_model_name_is_refused(tmp_path: Path) -> None:
    """`--served-model-name a /models/x` with no model before it: the folder became a
    name; serving the bundled model under it instead would hide the mistake."""
    from conveyor.cli import CommandLineError

    parser = build_parser()
    swallowed = parser.parse_args(["worker", "--served-model-name", "qwen", str(tmp_path)])
    with pytest.raises(CommandLineError, match="put the model first"):
        settings_from_args(swallowed)
    fine = parser.parse_args(["worker", str(tmp_path), "--served-model-name", "qwen", "q"])
    assert settings_from_args(fine).served_model_aliases == ["q"]


def test_token_counts_read_as_vllm_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's human-readable --max-model-len: 32k is 32,000, 32K is 32,768."""
    parser = build_parser()
    flags = ["serve", "--max-model-len", "32K", "--max-num-batched-tokens", "2.5k"]
    settings = settings_from_args(parser.parse_args(flags))
    assert (settings.max_model_len, settings.max_num_batched_tokens) == (32_768, 2_500)
    assert (
        settings_from_args(parser.parse_args(["serve", "--max-model-len", "4096"])).max_model_len
        == 4096
    )
    for bad in ("1.5K", "infk", "-4k", "1.0005k", "4 k"):  # binary suffixes: whole numbers
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--max-model-len", bad])
    exact = settings_from_args(parser.parse_args(["serve", "--max-model-len", "2.01k"]))
    assert exact.max_model_len == 2010  # not float's 2009
    monkeypatch.setenv("CONVEYOR_MAX_MODEL_LEN", "16k")
    assert Settings().max_model_len == 16_000


def test_the_static_key_may_not_be_the_service_key() -> None:
    """The service key names the project a batch line is billed to: a static --api-key
    that any client holds must not be it, unless both are the admin key."""
    with pytest.raises(ValidationError, match="--service-key equals --api-key"):
        Settings(api_key="shared", service_key="shared", admin_key="admin")
    with pytest.raises(ValidationError, match="--service-key equals --api-key"):
        Settings(api_key="shared", service_key="shared")
    Settings(api_key="one", admin_key="one")  # one secret for everything: the admin's
    Settings(api_key="static", admin_key="admin")  # the admin key serves the batch workers


def test_log_level_before_or_after_the_command_reaches_the_children() -> None:
    """`conveyor serve --log-level debug` as vLLM users write flags, or before the command;
    `conveyor serve` passes it on, so its worker, API and batch worker log at it too."""
    parser = build_parser()
    for argv in (["--log-level", "warning", "serve"], ["serve", "--log-level", "WARNING"]):
        settings = settings_from_args(parser.parse_args(argv))
        assert settings.log_level == "WARNING"
        assert settings_env(settings)["CONVEYOR_LOG_LEVEL"] == "WARNING"
    assert settings_from_args(parser.parse_args(["serve"])).log_level == "INFO"
    assert "CONVEYOR_LOG_LEVEL" not in settings_env(
        settings_from_args(parser.parse_args(["serve"]))
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-level", "loud"])
    drained = settings_from_args(parser.parse_args(["worker", "--drain-timeout", "5"]))
    assert drained.drain_timeout == 5.0


def test_chat_and_bench_refuse_what_cannot_work_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """These were tracebacks (MissingFileError, SamplingParamError) after loading."""
    from conveyor.cli import main

    missing = str(tmp_path / "no-model")
    for argv in (["chat", "--model", missing], ["bench", "engine", "--model", missing]):
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == f"conveyor: error: {missing}: not a model folder or a .gguf file"
    with pytest.raises(SystemExit):
        main(["chat", "--max-tokens", "0"])
    assert "--max-tokens: must be at least 1, got 0" in capsys.readouterr().err


def test_chat_offline_with_a_hub_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from conveyor.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["chat", "--model", "acme/not-cached", "--data-dir", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("conveyor: error: acme/not-cached is not a folder or .gguf file")


def test_worker_loss_timeout_reaches_the_api_processes() -> None:
    """`conveyor serve --worker-loss-timeout 30`: its API children read it from the env."""
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["serve", "--worker-loss-timeout", "30"]))
    assert settings.worker_loss_timeout == 30.0
    assert float(settings_env(settings)["CONVEYOR_WORKER_LOSS_TIMEOUT"]) == 30.0
    assert settings_from_args(parser.parse_args(["api"])).worker_loss_timeout == 120.0
    with pytest.raises(ValidationError, match="worker_loss_timeout"):
        Settings(worker_loss_timeout=-1)


def test_api_keys_as_vllm_takes_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """vLLM's `--api-key K1 K2` (any of them) and its VLLM_API_KEY: a server moved over
    from `vllm serve` with its environment must not come up open."""
    parser = build_parser()
    two = settings_from_args(parser.parse_args(["serve", "/m", "--api-key", "k1", "k2"]))
    assert [k.get_secret_value() for k in two.api_key or ()] == ["k1", "k2"]
    env = settings_env(two)
    assert env["CONVEYOR_API_KEY"] == '["k1", "k2"]'  # the children read both back
    monkeypatch.setenv("CONVEYOR_API_KEY", env["CONVEYOR_API_KEY"])
    assert Settings().api_key == two.api_key
    monkeypatch.delenv("CONVEYOR_API_KEY")
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    assert [k.get_secret_value() for k in Settings().api_key or ()] == ["from-vllm"]
    assert Settings().requires_key
    monkeypatch.setenv("CONVEYOR_API_KEY", "ours")  # ours wins over vLLM's
    assert [k.get_secret_value() for k in Settings().api_key or ()] == ["ours"]
    assert [k.get_secret_value() for k in Settings(api_key="[notjson").api_key or ()] == [
        "[notjson"
    ]
    with pytest.raises(ValidationError, match="non-empty"):
        Settings(api_key=["k1", " "])


def test_a_model_swallowed_by_api_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--api-key k1 gpt2` with no model before it: serving the bundled model, opened by
    the model's name, would hide the mistake."""
    from conveyor.cli import CommandLineError

    parser = build_parser()
    for model in (str(tmp_path), "Qwen/Qwen3-0.6B", "gpt2"):
        swallowed = parser.parse_args(["serve", "--api-key", "k1", model])
        with pytest.raises(CommandLineError, match="put it first"):
            settings_from_args(swallowed)
    fine = parser.parse_args(["serve", "gpt2", "--api-key", "k1", "k2"])
    assert settings_from_args(fine).model == "gpt2"
    bundled = parser.parse_args(["serve", "SmolLM2-135M-Instruct", "--api-key", "k1", "k2"])
    assert len(settings_from_args(bundled).api_key or ()) == 2
    assert settings_from_args(parser.parse_args(["serve", "--api-key", "k1"])).model is None
    monkeypatch.setenv("CONVEYOR_MODEL", "gpt2")  # the model from the environment
    assert settings_from_args(parser.parse_args(["serve", "--api-key", "k1", "a/b"])).api_key


def test_an_unrelated_api_key_variable_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Containers set API_KEY for other things; only CONVEYOR_API_KEY and VLLM_API_KEY
    are read, and an empty one is no key (as vLLM reads VLLM_API_KEY=)."""
    monkeypatch.setenv("API_KEY", "someone-elses")
    assert Settings().api_key is None
    assert [k.get_secret_value() for k in Settings(api_key=["flag"]).api_key or ()] == ["flag"]
    monkeypatch.setenv("CONVEYOR_API_KEY", '["flag"]')  # what a child reads
    assert [k.get_secret_value() for k in Settings().api_key or ()] == ["flag"]
    monkeypatch.delenv("CONVEYOR_API_KEY")
    monkeypatch.setenv("VLLM_API_KEY", "")
    assert Settings().api_key is None and not Settings().requires_key
    monkeypatch.setenv("CONVEYOR_API_KEY", "k-one\nk-two\n")  # a key file, a key a line
    assert [k.get_secret_value() for k in Settings().api_key or ()] == ["k-one", "k-two"]
    with pytest.raises(ValidationError, match="must not contain spaces"):
        Settings(api_key="two words")


def test_a_port_out_of_range_is_a_settings_error() -> None:
    """Not a traceback from bind() after Redis started."""
    with pytest.raises(ValidationError, match="less than or equal to 65535"):
        Settings(port=70_000)
    assert Settings(port=0).port == 0


def test_a_bad_value_from_the_environment_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator looks for a flag that is not on the command line otherwise."""
    from conveyor.cli import main

    monkeypatch.setenv("CONVEYOR_PORT", "abc")
    monkeypatch.setenv("VLLM_API_KEY", " ")
    assert main(["serve"]) == 2
    printed = capsys.readouterr().err.splitlines()
    assert any(line.startswith("conveyor: error: CONVEYOR_PORT: ") for line in printed)
    assert any(line.startswith("conveyor: error: VLLM_API_KEY: ") for line in printed)
    monkeypatch.delenv("VLLM_API_KEY")
    assert main(["serve", "--port", "70000"]) == 2  # the flag wins, and is named
    assert capsys.readouterr().err.startswith("conveyor: error: --port: ")


def test_sleep_mode_is_vllms_flag_and_dev_mode_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--enable-sleep-mode on any command; dev mode from our variable or vLLM's (empty:
    off); both reach the processes `conveyor serve` starts."""
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["api"])).enable_sleep_mode is False
    flagged = settings_from_args(parser.parse_args(["serve", "--enable-sleep-mode"]))
    assert flagged.enable_sleep_mode is True and flagged.server_dev_mode is False
    for name, value, on in [
        ("VLLM_SERVER_DEV_MODE", "1", True),
        ("VLLM_SERVER_DEV_MODE", "", False),
        ("CONVEYOR_SERVER_DEV_MODE", "true", True),
    ]:
        with monkeypatch.context() as env:
            env.delenv("VLLM_SERVER_DEV_MODE", raising=False)
            env.delenv("CONVEYOR_SERVER_DEV_MODE", raising=False)
            env.setenv(name, value)
            settings = settings_from_args(parser.parse_args(["serve", "--enable-sleep-mode"]))
            assert settings.server_dev_mode is on, (name, value)
            if on:  # a child sees only what the supervisor hands it
                env.delenv(name)
                for key, child_value in settings_env(settings).items():
                    env.setenv(key, child_value)
                child = Settings()
                assert (child.enable_sleep_mode, child.server_dev_mode) == (True, True)


def test_weight_transfer_is_vllms_flag_and_only_its_disk_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--weight-transfer-config reaches the API processes `conveyor serve` starts; a backend
    that hands tensors over from a trainer on the same GPUs is refused at start-up."""
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["api"])).weight_transfer_backend is None
    disk = ["serve", "--weight-transfer-config", '{"backend": "disk"}']
    settings = settings_from_args(parser.parse_args(disk))
    assert settings.weight_transfer_backend == "disk"
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings().weight_transfer_backend == "disk"
    for config, match in [
        ('{"backend": "nccl"}', "'nccl' is not served"),
        ("{}", "'nccl' is not served"),  # vLLM's default backend
        ("disk", "--weight-transfer-config is not JSON"),
    ]:
        with pytest.raises(ValidationError, match=match):
            settings_from_args(parser.parse_args(["serve", "--weight-transfer-config", config]))


def test_the_hf_token_reaches_the_engine_and_the_children_but_no_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["serve", "--hf-token", "hf_secret"]))
    config = settings.engine_config()
    assert config.hf_token == "hf_secret"
    assert "hf_secret" not in repr(config) and "hf_secret" not in repr(settings)
    assert settings_env(settings)["CONVEYOR_HF_TOKEN"] == "hf_secret"  # the worker's
    # vLLM's bare `--hf-token` (the stored login) and no flag: huggingface_hub's own.
    for argv in (["serve", "--hf-token"], ["serve"]):
        settings = settings_from_args(parser.parse_args(argv))
        assert settings.engine_config().hf_token is None
        assert "CONVEYOR_HF_TOKEN" not in settings_env(settings)
    monkeypatch.setenv("CONVEYOR_HF_TOKEN", "hf_env")
    assert Settings().engine_config().hf_token == "hf_env"


def test_kv_cache_memory_bytes_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert (
        settings_from_args(parser.parse_args(["serve"])).engine_config().kv_cache_memory_bytes
        is None
    )
    settings = settings_from_args(parser.parse_args(["serve", "--kv-cache-memory-bytes", "4G"]))
    assert settings.engine_config().kv_cache_memory_bytes == 4 << 30
    assert settings_env(settings)["CONVEYOR_KV_CACHE_MEMORY_BYTES"] == str(4 << 30)
    monkeypatch.setenv("CONVEYOR_KV_CACHE_MEMORY_BYTES", "2g")
    assert Settings().engine_config().kv_cache_memory_bytes == 2 * 10**9
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--kv-cache-memory-bytes", "lots"])


def test_the_log_level_is_read_from_vllms_variable_too(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.delenv("CONVEYOR_LOG_LEVEL", raising=False)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "debug")
    settings = settings_from_args(parser.parse_args(["serve"]))
    assert settings.log_level == "DEBUG"
    assert settings_from_args(parser.parse_args(["serve", "--log-level", "warning"])).log_level == (
        "WARNING"
    )
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "ERROR")  # ours wins over vLLM's
    assert Settings().log_level == "ERROR"


def test_structured_outputs_config_reaches_the_engine_and_names_the_reasoning_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    config = '{"backend": "xgrammar", "disable_any_whitespace": true, "reasoning_parser": "qwen3"}'
    settings = settings_from_args(
        parser.parse_args(["serve", "--structured-outputs-config", config])
    )
    assert settings.engine_config().compact_json is True
    assert settings.reasoning_parser == "qwen3"
    assert settings_from_args(parser.parse_args(["serve"])).engine_config().compact_json is False
    for key, value in settings_env(settings).items():  # the children of `serve`
        monkeypatch.setenv(key, value)
    assert Settings() == settings
    with pytest.raises(ValueError, match="names reasoning_parser 'qwen3' but --reasoning-parser"):
        settings_from_args(
            parser.parse_args(
                [
                    "serve",
                    "--structured-outputs-config",
                    config,
                    "--reasoning-parser",
                    "deepseek_r1",
                ]
            )
        )
    with pytest.raises(ValueError, match="backend 'magic'"):
        settings_from_args(
            parser.parse_args(["serve", "--structured-outputs-config", '{"backend": "magic"}'])
        )
