"""The `conveyor` command: one entry point, a sub-command per process kind.

Flags use vLLM's names; each has a `CONVEYOR_*` env var twin through
`Settings` (a flag given on the command line wins).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from conveyor.config_file import CONFIG_FLAG, ConfigFileError, apply_config_file, config_path
from conveyor.log_config import LogConfigError, configure_logging
from conveyor.operator_cli import add_operator_commands
from conveyor.private_dir import make_private_dir
from conveyor.settings import Settings, human_readable_int, json_or_comma_list
from engine.configuration_error import ConfigurationError
from engine.loader import BUNDLED_MODEL_NAME, HubUnavailable


def _token_count(text: str) -> int:
    """argparse's type for vLLM's human-readable token counts, saying what it takes."""
    try:
        return human_readable_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """argparse's type for a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Each flag's names (a long name, or a tuple of it and vLLM's short alias) and options.
_ENGINE_FLAGS: list[tuple[str | tuple[str, ...], dict]] = [
    ("--tokenizer", {"help": "a folder or hub id whose tokenizer replaces the model's"}),
    ("--revision", {"help": "a hub model's branch, tag or commit"}),
    ("--tokenizer-revision", {"help": "--tokenizer's branch, tag or commit (a hub id)"}),
    ("--download-dir", {"help": "where hub models are downloaded (default: <data dir>/hub)"}),
    (
        "--hf-token",
        {
            "nargs": "?",
            "const": "",
            "metavar": "TOKEN",
            "help": "the token hub downloads use (gated or private models); without a "
            "value, or unset: HF_TOKEN or the stored `hf auth login`",
        },
    ),
    (
        "--served-model-name",
        {"nargs": "+", "help": "the model's name in the API; more names answer too"},
    ),
    ("--device", {}),
    (
        "--cpu-threads",
        {"type": int, "help": "threads an engine computes with on CPU (default: one per core)"},
    ),
    ("--dtype", {"choices": Settings.choices("dtype")}),
    ("--block-size", {"type": int}),
    ("--max-num-seqs", {"type": int}),
    ("--max-num-batched-tokens", {"type": _token_count, "metavar": "N"}),
    (
        "--long-prefill-token-threshold",
        {
            "type": _token_count,
            "metavar": "N",
            "help": "the most prompt tokens one request prefills per step (0: off), so "
            "short prompts are not stuck behind long ones",
        },
    ),
    (
        "--batch-prefill-tokens",
        {"type": int, "help": "prompt tokens batch lines may prefill per engine step"},
    ),
    (
        "--max-model-len",
        {"type": _token_count, "metavar": "N", "help": "tokens (32k, 32K, 32768)"},
    ),
    ("--kv-cache-memory", {"type": int, "help": "KV cache bytes on CPU"}),
    (
        "--kv-cache-memory-bytes",
        {
            "type": _token_count,
            "metavar": "BYTES",
            "help": "the KV cache's bytes on any device (4G, 4000000000), in place of "
            "--gpu-memory-utilization's share on a GPU and --kv-cache-memory on a CPU",
        },
    ),
    (
        "--kv-cache-dtype",
        {
            "choices": Settings.choices("kv_cache_dtype"),
            "help": "fp8: one byte per cached key and value (twice bf16's tokens)",
        },
    ),
    (
        ("--quantization", "-q"),
        {
            "choices": Settings.choices("quantization"),
            "help": "fp8: quantize a full-precision checkpoint to FP8 as it loads",
        },
    ),
    ("--gpu-memory-utilization", {"type": float}),
    ("--chat-template", {"help": "a Jinja template file or string"}),
    ("--attention-backend", {"choices": ["torch", "triton"]}),
    ("--data-dir", {}),
    ("--seed", {"type": int}),
    (
        "--speculative-config",
        {"help": 'vLLM\'s JSON: {"method": "ngram", "num_speculative_tokens": 4}'},
    ),
    (
        "--profiler-config",
        {
            "help": 'vLLM\'s JSON: {"profiler": "torch", "torch_profiler_dir": "/traces"} '
            "(POST /start_profile, /stop_profile)"
        },
    ),
    (
        "--structured-outputs-config",
        {
            "metavar": "JSON",
            "help": 'vLLM\'s JSON: {"backend": "xgrammar", "disable_any_whitespace": true}; '
            "any backend is compiled with llguidance, disable_any_whitespace makes JSON "
            "output compact",
        },
    ),
    (
        "--weight-transfer-config",
        {"help": 'vLLM\'s JSON: {"backend": "disk"} (POST /update_weights, dev mode)'},
    ),
    (
        "--lora-modules",
        {
            "nargs": "+",
            "metavar": "NAME=PATH",
            "help": "LoRA adapters (PEFT folders) served as models of their own name; "
            'each name=path or JSON {"name": ..., "path": ...}',
        },
    ),
    ("--max-lora-rank", {"type": int, "help": "the highest adapter rank accepted (16)"}),
    (
        "--runner",
        {
            "choices": ["auto", "generate", "pooling"],
            "help": "pooling: serve embeddings (/v1/embeddings); auto: by the checkpoint",
        },
    ),
    ("--convert", {"choices": ["auto", "none", "embed"], "help": "embed: --runner pooling"}),
    (
        "--task",
        {"choices": ["auto", "generate", "embed", "embedding"], "help": "vLLM's older --runner"},
    ),
    (
        "--pooler-config",
        {"help": 'embedding pooling: {"pooling_type": "LAST"|"MEAN"|"CLS", "normalize": true}'},
    ),
    ("--override-pooler-config", {"help": "vLLM's older name of --pooler-config"}),
    (
        "--max-logprobs",
        {"type": int, "help": "the most logprobs a request may ask for (20; -1: the vocabulary)"},
    ),
    (
        "--logprobs-mode",
        {
            "choices": Settings.choices("logprobs_mode"),
            "help": "raw_logprobs (the model's), processed_logprobs (what was sampled from, "
            "after penalties, masks, temperature, top-k/top-p), or either as logits",
        },
    ),
    (
        "--generation-config",
        {
            "help": "sampling defaults: auto (the model's generation_config.json), vllm "
            "(none) or a folder holding one"
        },
    ),
    (
        "--override-generation-config",
        {"help": 'JSON over those defaults: {"temperature": 0.5, "max_new_tokens": 512}'},
    ),
    (
        "--hf-overrides",
        {"help": 'JSON over config.json: {"rope_scaling": {"rope_type": "yarn", ...}}'},
    ),
    (
        "--num-gpu-blocks-override",
        {"type": int, "help": "KV cache blocks to allocate, whatever the memory says"},
    ),
    (
        ("--tensor-parallel-size", "-tp"),
        {"type": int, "help": "1 only: a worker runs its model on one device"},
    ),
    (
        ("--pipeline-parallel-size", "-pp"),
        {"type": int, "help": "1 only: a worker runs its model on one device"},
    ),
    (
        ("--data-parallel-size", "-dp"),
        {"type": int, "help": "engine workers `conveyor serve` starts, GPU i for worker i"},
    ),
    (
        "--max-loras",
        {"type": int, "help": "vLLM's flag, accepted for compatibility (all adapters batch)"},
    ),
    (
        "--max-cpu-loras",
        {"type": int, "help": "the most LoRA adapters loaded at once (default: no limit)"},
    ),
]


# vLLM flags that ask for what conveyor always does, or for nothing it needs: accepted
# so a `vllm serve` command line runs unchanged, and said to change nothing.
_NO_OP_FLAGS: list[tuple[str, dict]] = [
    ("--trust-remote-code", {"help": "conveyor runs no code from checkpoints"}),
    ("--disable-log-requests", {"help": "requests are logged only with --enable-log-requests"}),
    ("--enable-chunked-prefill", {"help": "prompts are always prefilled in chunks"}),
    (
        "--no-enable-chunked-prefill",
        {"help": "prompts are still prefilled in chunks (the outputs are the same)"},
    ),
    ("--enable-prompt-tokens-details", {"help": "usage always has cached_tokens"}),
    (
        "--prefix-caching-hash-algo",
        {
            "choices": ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor", "builtin"],
            "help": "cached blocks are always keyed by SHA-256 (vLLM's default)",
        },
    ),
    (
        "--swap-space",
        {"type": float, "help": "a preempted request is recomputed, never swapped (vLLM V1)"},
    ),
    ("--max-seq-len-to-capture", {"type": int, "help": "decode graphs cover every length"}),
    (
        "--distributed-executor-backend",
        {"choices": ["mp", "ray", "uni", "external_launcher"], "help": "one device per worker"},
    ),
    (
        "--guided-decoding-backend",
        {"metavar": "BACKEND", "help": "conveyor compiles grammars itself"},
    ),
    # Mistral's model cards say `--tokenizer-mode mistral --config-format mistral
    # --load-format mistral`; their releases carry HF's files too, which are read.
    (
        "--load-format",
        {
            "choices": ["auto", "safetensors", "pt", "gguf", "mistral"],
            "help": "read from the files themselves (HF's safetensors, also of Mistral's releases)",
        },
    ),
    (
        "--tokenizer-mode",
        {
            "choices": ["auto", "hf", "slow", "mistral"],
            "help": "always the fast HF tokenizer (tokenizer.json, also in Mistral's releases)",
        },
    ),
    (
        "--config-format",
        {
            "choices": ["auto", "hf", "mistral"],
            "help": "config.json is read (Mistral's releases carry it beside params.json)",
        },
    ),
    ("--disable-custom-all-reduce", {"help": "one device per worker: nothing to reduce"}),
    ("--async-scheduling", {"help": "the engine loop never waits on the API or Redis"}),
    ("--enable-server-load-tracking", {"help": "GET /load always answers"}),
    (
        "--enable-request-id-headers",
        {"help": "every response carries x-request-id (the caller's X-Request-Id, or new)"},
    ),
    ("--enable-expert-parallel", {"help": "a MoE model's experts are all on its one device"}),
    (
        "--disable-frontend-multiprocessing",
        {"help": "the API is its own process, talking to workers over Redis"},
    ),
    (
        "--preemption-mode",
        {"choices": ["recompute"], "help": "a preempted request is recomputed"},
    ),
    (
        "--compilation-config",
        {"metavar": "JSON", "help": "decode steps replay CUDA graphs unless --enforce-eager"},
    ),
    # A vision-language model's serving flags: conveyor serves its text model only.
    (
        "--limit-mm-per-prompt",
        {
            "metavar": "JSON",
            "help": "every model is served text-only (as a limit of 0 asks): image, video "
            "and audio parts get a 400",
        },
    ),
    ("--mm-processor-kwargs", {"metavar": "JSON", "help": "no media processor runs"}),
    ("--mm-processor-cache-gb", {"type": float, "help": "no media processor runs"}),
    ("--disable-mm-preprocessor-cache", {"help": "no media processor runs"}),
    ("--allowed-local-media-path", {"metavar": "PATH", "help": "no media is read"}),
]


def _add_no_op_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vLLM flags accepted for compatibility (no effect)")
    for flag, kwargs in _NO_OP_FLAGS:
        takes_value = bool({"type", "choices", "metavar"} & set(kwargs))
        name = flag[2:].replace("-", "_")
        options = (
            {"metavar": name.upper(), **kwargs}
            if takes_value
            else {"action": "store_true", **kwargs}
        )
        group.add_argument(flag, default=None, dest=f"no_op_{name}", **options)
    group.add_argument(
        "-O",
        default=None,
        dest="no_op_optimization_level",
        metavar="LEVEL",
        help="vLLM's compilation level: decode steps replay CUDA graphs unless --enforce-eager",
    )


def _add_flags(
    parser: argparse.ArgumentParser, table: list[tuple[str | tuple[str, ...], dict]]
) -> None:
    """A table's flags, each unset (None) unless given, so env vars and defaults show."""
    for flags, kwargs in table:
        names = (flags,) if isinstance(flags, str) else flags
        parser.add_argument(*names, default=None, **kwargs)


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    if not any(CONFIG_FLAG in action.option_strings for action in parser._actions):
        parser.add_argument(
            CONFIG_FLAG,
            default=None,
            metavar="FILE",
            help="a YAML file of these options (max-num-seqs: 64); flags given here win",
        )


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    _add_config_flag(parser)
    _add_log_level_flag(parser)
    parser.add_argument(
        "model", nargs="?", help="HF folder, .gguf file or hub id (default: bundled)"
    )
    parser.add_argument(
        "--model",
        dest="model_flag",
        default=None,
        metavar="MODEL",
        help="the model, as vLLM's api_server takes it (the positional one wins)",
    )
    _add_flags(parser, _ENGINE_FLAGS)
    parser.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
    )
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="run decode steps eagerly instead of replaying CUDA graphs (GPU only)",
    )
    parser.add_argument(
        "--enable-lora",
        action="store_true",
        default=None,
        help="vLLM's flag, accepted for compatibility (--lora-modules alone enables LoRA)",
    )


_SERVING_FLAGS: list[tuple[str | tuple[str, ...], dict]] = [
    ("--host", {}),
    ("--port", {"type": int}),
    ("--uds", {"help": "serve the API on this Unix domain socket (--host/--port unused)"}),
    (
        ("--api-server-count", "-asc"),
        {"type": int, "help": "API processes `conveyor serve` starts on its one port"},
    ),
    (
        "--api-key",
        {
            "nargs": "+",
            "metavar": "KEY",
            "help": "require one of these bearer keys on every API path but health/metrics "
            "(or CONVEYOR_API_KEY, or vLLM's VLLM_API_KEY)",
        },
    ),
    ("--redis-url", {"help": "external Redis; default: an embedded redis-server"}),
    ("--redis-prefix", {}),
    ("--max-queued-requests", {"type": int}),
    (
        "--drain-timeout",
        {"type": float, "help": "seconds a stopping process lets in-flight work finish (30)"},
    ),
    ("--request-timeout", {"type": float}),
    (
        "--worker-loss-timeout",
        {
            "type": float,
            "help": "seconds a request waits for its model's workers to come back before "
            "a 503 no_worker (120)",
        },
    ),
    ("--instance-id", {}),
    ("--database-url", {"help": "SQLAlchemy URL; default: SQLite under the data dir"}),
    ("--admin-key", {"help": "enable the /v1/organization admin API with this bearer key"}),
    ("--service-key", {"help": "batch workers' key to the API (default: the admin key)"}),
    ("--max-upload-bytes", {"type": int, "help": "largest file accepted by /v1/files"}),
    (
        "--max-project-storage-bytes",
        {"type": int, "help": "most bytes of files one project may keep (100 GiB; 0: no limit)"},
    ),
    ("--max-body-bytes", {"type": int, "help": "largest request body but uploads (4 MB)"}),
    (
        "--response-retention-days",
        {"type": float, "help": "days stored /v1/responses objects are kept (0: forever)"},
    ),
    (
        "--tool-call-parser",
        {
            "choices": Settings.choices("tool_call_parser"),
            "help": 'read tool calls from model text: tool_choice "auto"',
        },
    ),
    (
        "--reasoning-parser",
        {
            "choices": Settings.choices("reasoning_parser"),
            "help": "split a reasoning model's thinking into `reasoning` in chat answers",
        },
    ),
]


_HTTP_FLAGS: list[tuple[str | tuple[str, ...], dict]] = [
    ("--allowed-origins", {"type": json_or_comma_list, "help": 'CORS origins (["*"])'}),
    ("--allowed-methods", {"type": json_or_comma_list, "help": 'CORS methods (["*"])'}),
    ("--allowed-headers", {"type": json_or_comma_list, "help": 'CORS headers (["*"])'}),
    ("--root-path", {"help": "the path prefix a reverse proxy serves the API under"}),
    (
        "--middleware",
        {
            "action": "append",
            "metavar": "IMPORT_PATH",
            "help": "an ASGI middleware class or async (request, call_next) function to add "
            "to the API (repeatable)",
        },
    ),
    ("--ssl-keyfile", {}),
    ("--ssl-certfile", {"help": "serve HTTPS with this certificate (and --ssl-keyfile)"}),
    ("--ssl-ca-certs", {}),
    (
        "--ssl-cert-reqs",
        {"type": int, "help": "client certificates: 0 none, 1 optional, 2 required"},
    ),
    ("--uvicorn-log-level", {"choices": Settings.choices("uvicorn_log_level")}),
    (
        "--http-header-timeout",
        {"type": float, "help": "seconds a client may take to send a request's headers (30)"},
    ),
    (
        "--log-flush-interval",
        {"type": float, "help": "seconds between request-log writes to SQL (1)"},
    ),
    (
        "--max-log-len",
        {"type": int, "help": "prompt (and output) token ids and characters per logged request"},
    ),
    ("--response-role", {"help": "the role of chat answers' messages (assistant)"}),
    (
        "--chat-template-content-format",
        {
            "choices": ["auto", "string", "openai"],
            "help": "message content as the template gets it: auto and string, one string "
            "(text parts joined); openai, a list of text parts",
        },
    ),
    (
        "--default-chat-template-kwargs",
        {
            "metavar": "JSON",
            "help": 'chat template kwargs under every request\'s: {"enable_thinking": false}',
        },
    ),
    (
        "--prefix-cache-scope",
        {
            "choices": Settings.choices("prefix_cache_scope"),
            "help": "project (default): cached prompt blocks are shared within a project "
            "only; global: across projects",
        },
    ),
    (
        "--scheduling-policy",
        {
            "choices": Settings.choices("scheduling_policy"),
            "help": "priority (default here): requests' `priority` counts; fcfs: refused",
        },
    ),
]


# The batch worker's: on `conveyor batch-worker`, and on `conveyor serve` for the one it starts.
_BATCH_FLAGS: list[tuple[str | tuple[str, ...], dict]] = [
    ("--batch-api-url", {"help": "the API that runs the lines (default: this host's)"}),
    ("--batch-worker-concurrency", {"type": int, "help": "batches run at once"}),
    ("--batch-max-inflight", {"type": int, "help": "lines of one batch in flight"}),
    ("--batch-max-lines", {"type": int, "help": "the most lines a batch may have (50,000)"}),
]


_LOG_CONFIG_HELP = "a logging.config.dictConfig JSON file for every process (not --log-level)"
_LOG_LEVEL_HELP = "debug, info (default), warning or error; before or after the command"
LOG_LEVELS = Settings.choices("log_level")


def _add_log_level_flag(parser: argparse.ArgumentParser) -> None:
    """`conveyor serve --log-level debug` as well as `conveyor --log-level debug serve`
    (and --log-config-file): unset here unless given, so the top-level flag's value
    stands."""
    if not any("--log-level" in action.option_strings for action in parser._actions):
        parser.add_argument(
            "--log-level",
            default=argparse.SUPPRESS,
            type=str.upper,
            choices=LOG_LEVELS,
            help=_LOG_LEVEL_HELP,
        )
        parser.add_argument(
            "--log-config-file",
            default=argparse.SUPPRESS,
            type=Path,
            metavar="JSON",
            help=_LOG_CONFIG_HELP,
        )


def _add_serving_flags(parser: argparse.ArgumentParser) -> None:
    _add_config_flag(parser)
    _add_log_level_flag(parser)
    _add_flags(parser, _SERVING_FLAGS + _HTTP_FLAGS)
    parser.add_argument(
        "--enable-log-requests",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log each request the API queues: model, sampling params, prompt token ids",
    )
    parser.add_argument(
        "--enable-log-outputs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --enable-log-requests, also log each request's output: text, token ids, "
        "finish reason",
    )
    for flag, help_text in (
        ("--return-tokens-as-token-ids", "logprobs name tokens token_id:N (vLLM's form)"),
        (
            "--exclude-tools-when-tool-choice-none",
            'tool_choice "none" leaves the tools out of the prompt',
        ),
        (
            "--enable-tokenizer-info-endpoint",
            "GET /tokenizer_info: a model's tokenizer_config.json and chat template",
        ),
        ("--enable-force-include-usage", "every stream ends with usage, asked for or not"),
        ("--allow-credentials", "CORS: allow credentials"),
        ("--disable-fastapi-docs", "no /docs, /redoc or /openapi.json"),
        ("--disable-uvicorn-access-log", "no log line per HTTP request"),
        ("--disable-log-stats", "no periodic throughput / queue / KV cache log lines"),
    ):
        parser.add_argument(flag, action="store_true", default=None, help=help_text)
    parser.add_argument(
        "--log-prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store prompt text in the request logs",
    )
    parser.add_argument(
        "--allow-runtime-lora-updating",
        action="store_true",
        default=None,
        help="load and unload LoRA adapters through POST /v1/load_lora_adapter and "
        "/v1/unload_lora_adapter (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING)",
    )
    parser.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        default=None,
        help="POST /sleep, POST /wake_up and GET /is_sleeping: free the device's memory "
        "while the model is idle (vLLM's sleep mode; development endpoints, served with "
        "CONVEYOR_SERVER_DEV_MODE=1 or vLLM's VLLM_SERVER_DEV_MODE=1)",
    )
    parser.add_argument(
        "--enable-reasoning",
        action="store_true",
        default=None,
        help="vLLM's older flag, accepted for compatibility (--reasoning-parser alone enables it)",
    )
    parser.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        default=None,
        help="vLLM's flag, accepted for compatibility (--tool-call-parser alone enables it)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags given on the command line override env vars and defaults."""
    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key in Settings.model_fields
    }
    if given.get("model") is None and getattr(args, "model_flag", None) is not None:
        given["model"] = args.model_flag
    names = getattr(args, "served_model_name", None)
    if isinstance(names, list):  # vLLM's --served-model-name A B: A, and B as another name
        last = names[-1]
        if given.get("model") is None and len(names) > 1 and _names_a_model(last):
            raise CommandLineError(
                f"--served-model-name took {last!r} as one of its names, so no model was "
                "given: put the model first (`conveyor serve MODEL --served-model-name ...`)"
            )
        given["served_model_name"] = names[0]
        if len(names) > 1:
            given["served_model_aliases"] = names[1:]
    older = getattr(args, "override_pooler_config", None)
    if older is not None:
        given.setdefault("pooler_config", older)
    settings = Settings(**given)
    keys = getattr(args, "api_key", None)
    if isinstance(keys, list) and len(keys) > 1 and settings.model is None:
        # `--api-key K1 gpt2`: the model became a key (and the bundled model would serve,
        # opened by the model's name); which of several keys was meant is not knowable.
        raise CommandLineError(
            f"--api-key took {len(keys)} keys and no model was given: if the last, "
            f"{keys[-1]!r}, is the model, put it first (`conveyor serve MODEL --api-key "
            f"...`); for the bundled model with several keys, name it: `conveyor serve "
            f"{BUNDLED_MODEL_NAME} --api-key ...`"
        )
    return settings


class CommandLineError(ValueError):
    """Flags that parse but cannot mean what was meant; said in one line."""


def _names_a_model(text: str) -> bool:
    """A model file or folder on this machine (not a name anyone would serve under)."""
    return text.endswith(".gguf") or Path(text).expanduser().exists()


def _report_bad_settings(exc: ValidationError, args: argparse.Namespace) -> int:
    """One line per problem, named by its flag, as argparse reports its own (or by the
    env var it came from, when no flag gave it); no traceback."""
    for error in exc.errors():
        first, *rest = error["loc"] or ("",)
        name = Settings.field_named(str(first))
        env = None if getattr(args, name, None) is not None else Settings.env_var_setting(name)
        flag = env or f"--{name.replace('_', '-')}"
        where = f"{flag}{''.join(f'[{p}]' for p in rest)}: "
        message = str(error["msg"]).removeprefix("Value error, ")
        print(f"conveyor: error: {where if first else ''}{message}", file=sys.stderr)
    return 2


def role_settings(args: argparse.Namespace) -> Settings:
    """Settings of a command that keeps data, whose data dir exists (closed to other
    users when this creates it) before any part of it writes there."""
    settings = settings_from_args(args)
    try:
        make_private_dir(settings.data_dir)
    except OSError as exc:
        raise CommandLineError(f"cannot create the data dir {settings.data_dir}: {exc}") from None
    return settings


def _chat(args: argparse.Namespace) -> int:
    from conveyor.demo import run_chat

    return run_chat(role_settings(args), max_tokens=args.max_tokens)


def _serve(args: argparse.Namespace) -> int:
    from conveyor.launcher import run_serve

    return run_serve(role_settings(args))


def _api(args: argparse.Namespace) -> int:
    from api.server import run_api

    return run_api(role_settings(args))


def _worker(args: argparse.Namespace) -> int:
    from workers.engine_worker import run_worker

    return run_worker(role_settings(args))


def _batch_worker(args: argparse.Namespace) -> int:
    from workers.batch.main import run_batch_worker

    settings = role_settings(args)
    return run_batch_worker(settings, log_level=settings.log_level)


# `conveyor bench TARGET`: the module whose main() runs it (imported only when run).
BENCHMARKS = {
    "engine": "benchmarks.engine",
    "serve": "benchmarks.serve",
    "kernels": "benchmarks.kernels",
    "experts": "benchmarks.experts",
    "fp8-linear": "benchmarks.fp8_linear",
    "int-linear": "benchmarks.int_linear",
    "batch": "benchmarks.batch_interference",
    "structured": "benchmarks.structured_output",
    "speculative": "benchmarks.speculative",
    "lora": "benchmarks.lora",
    "embed": "benchmarks.embeddings",
    "kv-cache": "benchmarks.kv_cache",
    "beam": "benchmarks.beam_search",
    "sleep": "benchmarks.sleep_mode",
    "weights": "benchmarks.weight_update",
}


def _bench(args: argparse.Namespace) -> int:
    import importlib

    return int(importlib.import_module(BENCHMARKS[args.target]).main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    parser.add_argument(
        "--log-level", default=None, type=str.upper, choices=LOG_LEVELS, help=_LOG_LEVEL_HELP
    )
    parser.add_argument(
        "--log-config-file", default=None, type=Path, metavar="JSON", help=_LOG_CONFIG_HELP
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # No abbreviated flags where --config is read: `--conf FILE` must not slip past it.
    chat = sub.add_parser(
        "chat", allow_abbrev=False, help="interactive chat with the engine in this terminal"
    )
    _add_engine_flags(chat)
    chat.add_argument("--max-tokens", type=positive_int, default=256)
    chat.set_defaults(func=_chat)

    serve = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="everything in one process tree: embedded Redis, a worker, the API",
    )
    _add_engine_flags(serve)
    _add_serving_flags(serve)
    _add_flags(serve, _BATCH_FLAGS)  # for its batch worker
    _add_no_op_flags(serve)
    serve.set_defaults(func=_serve)

    api = sub.add_parser(
        "api", allow_abbrev=False, help="the OpenAI-compatible HTTP front end only"
    )
    _add_serving_flags(api)
    api.add_argument("--served-model-name", nargs="+", default=None)
    api.add_argument("--chat-template", default=None)
    api.add_argument("--data-dir", default=None, help="holds the default SQLite database")
    api.set_defaults(func=_api)

    worker = sub.add_parser(
        "worker", allow_abbrev=False, help="one engine worker consuming a model's request stream"
    )
    _add_engine_flags(worker)
    _add_serving_flags(worker)
    _add_no_op_flags(worker)
    worker.set_defaults(func=_worker)

    batch_worker = sub.add_parser(
        "batch-worker",
        allow_abbrev=False,
        help="a Celery worker that runs batch jobs through the API",
    )
    _add_serving_flags(batch_worker)
    batch_worker.add_argument("--data-dir", default=None, help="where uploaded files are stored")
    _add_flags(batch_worker, _BATCH_FLAGS)
    batch_worker.set_defaults(func=_batch_worker)

    add_operator_commands(sub, settings_from_args)

    bench = sub.add_parser(
        "bench",
        help=f"benchmarks: `conveyor bench {'|'.join(BENCHMARKS)} [flags]`",
    )
    bench.add_argument("target", choices=list(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def _command_parser(
    parser: argparse.ArgumentParser, argv: list[str]
) -> argparse.ArgumentParser | None:
    """The sub-command's parser that `argv` names, if any."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            for token in argv:
                if token in action.choices:
                    return action.choices[token]
    return None


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """The arguments, `--config FILE`'s values under the command line's (SystemExit on a
    bad one, as argparse does); the image's healthcheck reads command lines this way too."""
    parser = build_parser()
    try:
        path = config_path(argv)
        command = _command_parser(parser, argv) if path is not None else None
        if path is not None and command is not None:
            apply_config_file(command, path)
    except ConfigFileError as exc:
        parser.error(str(exc))
    return parser.parse_args(argv)


def _logging_setup(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The command line's --log-level and --log-config-file, else CONVEYOR_LOG_LEVEL and
    CONVEYOR_LOG_CONFIG_FILE (how `conveyor serve` tells its children), else INFO and
    none. Bad settings are reported later, by the command itself."""
    try:
        settings: Settings | None = Settings()
    except (ValidationError, SettingsError):
        settings = None
    level = args.log_level or (settings.log_level if settings else "INFO")
    config_file = args.log_config_file or (settings.log_config_file if settings else None)
    return str(level).upper(), config_file


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(list(sys.argv[1:] if argv is None else argv))
    try:
        configure_logging(*_logging_setup(args))
    except LogConfigError as exc:
        print(f"conveyor: error: {exc}", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        return _report_bad_settings(exc, args)
    except (SettingsError, CommandLineError) as exc:  # an env var that does not decode, ...
        print(f"conveyor: error: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:  # `chat` or `bench` given a model that cannot work
        print(f"conveyor: error: {exc}", file=sys.stderr)
        return 2
    except HubUnavailable as exc:  # `chat` or `bench` offline: perhaps not for long
        print(f"conveyor: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
