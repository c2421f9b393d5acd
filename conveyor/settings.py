"""All of conveyor's settings, read from flags and `CONVEYOR_*` env vars in one place.

Nothing else in the project reads the environment: the CLI builds a
`Settings` (flags win over env vars, env vars over defaults) and hands plain
frozen config objects to the parts it starts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor.json_flag import read_json_flag
from conveyor.profiler_config import ProfilerConfig
from conveyor.structured_outputs_config import StructuredOutputsConfig

# Plain dataclasses and json, no torch: API processes read these settings too.
from engine.chat_template_kwargs import parse_default_template_kwargs
from engine.generation_defaults import parse_overrides
from engine.hf_overrides import parse_hf_overrides
from engine.lora_config import DEFAULT_MAX_LORA_RANK, LoRAConfig
from engine.pooler_config import PoolerConfig
from engine.sampling_params import DEFAULT_MAX_LOGPROBS
from engine.speculative_config import SpeculativeConfig

if TYPE_CHECKING:
    from engine.config import EngineConfig


def json_or_comma_list(text: str) -> list[str]:
    """vLLM's `--allowed-origins '["https://a.example"]'` (a JSON list), or `a,b`."""
    if not text.lstrip().startswith("["):
        return [part.strip() for part in text.split(",") if part.strip()]
    value = json.loads(text)  # a bad one is a ValueError, which names the setting
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a JSON list of strings, got {text!r}")
    return value


def _json_key_list(text: str) -> list[str] | None:
    """Several keys as a JSON list of strings; None if `text` is not one (it is a key)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


# sockaddr_un's sun_path on Linux: a socket's path and its NUL fit in 108 bytes.
_UNIX_PATH_MAX = 108

_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)")


def human_readable_int(text: str) -> int:
    """vLLM's token counts: `32k` is 32,000 and `25.6k` 25,600; `32K` is 32,768 (binary
    suffixes take whole numbers); a plain number is itself. A ValueError otherwise."""
    match = _HUMAN_INT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a count (32768, 32k or 32K)")
    number, suffix = match.groups()
    if suffix in _BINARY:
        if "." in number:
            raise ValueError(f"{text!r}: binary suffixes (K, M, G, T) take whole numbers")
        return int(number) * _BINARY[suffix]
    value = Decimal(number) * _DECIMAL.get(suffix, 1)  # exact: 2.01k is 2010
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


class Settings(BaseSettings):
    """Process-wide settings; every field maps to `CONVEYOR_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", extra="ignore", frozen=True, populate_by_name=True
    )

    data_dir: Path = Field(
        default=Path("~/.cache/conveyor"),
        description="converted-model cache, SQLite database, uploaded and result files",
    )
    model: str | None = Field(default=None, description="HF folder, .gguf file or hub id")
    tokenizer: str | None = Field(
        default=None, description="a folder or hub id whose tokenizer replaces the model's"
    )
    revision: str | None = Field(default=None, description="a hub model's branch, tag or commit")
    tokenizer_revision: str | None = Field(
        default=None, description="--tokenizer's branch, tag or commit, for a hub id"
    )
    download_dir: Path | None = Field(
        default=None, description="where hub models are downloaded (default: <data_dir>/hub)"
    )
    hf_token: SecretStr | None = Field(
        default=None,
        description="the token hub downloads use, for gated and private models (vLLM's "
        "--hf-token; default, or the flag without a value: HF_TOKEN or the stored login)",
    )
    served_model_name: str | None = None
    served_model_aliases: list[str] = Field(
        default_factory=list,
        description="more names the model answers to (vLLM's --served-model-name A B C: "
        "A is the name above, B and C are these)",
    )
    device: str | None = Field(default=None, description="cpu or cuda; default: cuda if present")
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="threads an engine computes with on CPU; default: one per core, "
        "divided among the workers `conveyor serve -dp N` starts on one CPU",
    )
    # vLLM's --dtype values, and the short names (engine/config.py maps each to torch's).
    dtype: (
        Literal["auto", "float32", "float", "fp32", "bfloat16", "bf16", "float16", "half", "fp16"]
        | None
    ) = Field(
        default=None,
        description="auto: bfloat16 on a GPU, float32 on CPU; or float32, bfloat16, float16",
    )
    block_size: int = 16
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    long_prefill_token_threshold: int = Field(
        default=0,
        ge=0,
        description="the most prompt tokens one request prefills per engine step (0: off), "
        "so a short prompt behind long ones starts at once (vLLM's flag)",
    )
    batch_prefill_tokens: int = Field(
        default=256,
        ge=1,
        description="prompt tokens batch lines may prefill per engine step: bounds how "
        "long an interactive request arriving mid-step waits behind them",
    )
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_memory: int = Field(default=1 << 30, description="KV cache bytes on CPU")
    kv_cache_memory_bytes: int | None = Field(
        default=None,
        ge=1,
        description="vLLM's flag: the KV cache's bytes on any device, in place of "
        "--gpu-memory-utilization's share on a GPU and --kv-cache-memory on a CPU",
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        default="auto",
        description="auto: the model's dtype; fp8 (e4m3) or fp8_e5m2: a byte per key and "
        "value, twice a bf16 cache's tokens in the same memory",
    )
    quantization: (
        Literal["fp8", "mxfp4", "compressed-tensors", "gptq", "gptq_marlin", "awq", "awq_marlin"]
        | None
    ) = Field(
        default=None,
        description="fp8: quantize a full-precision checkpoint's projections to FP8 as it "
        "loads (half of bf16's weight memory on a GPU); a quantized checkpoint's own "
        "method changes nothing",
    )
    gpu_memory_utilization: float = 0.9
    chat_template: str | None = Field(default=None, description="file path or Jinja string")
    attention_backend: str | None = Field(default=None, description="torch or triton")
    enforce_eager: bool = Field(
        default=False, description="never replay decode steps from CUDA graphs (GPU only)"
    )
    seed: int = 0
    max_logprobs: int = Field(
        default=DEFAULT_MAX_LOGPROBS,
        ge=-1,
        description="the most `logprobs` / `top_logprobs` a request may ask for (-1: the "
        "vocabulary)",
    )
    logprobs_mode: Literal[
        "raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"
    ] = Field(
        default="raw_logprobs",
        description="what logprobs report: the model's own distribution (raw) or the one "
        "sampled from, after penalties, masks, temperature, top-k/top-p (processed); "
        "_logits: logits instead of logprobs",
    )
    generation_config: str = Field(
        default="auto",
        description="sampling defaults: auto: the model's generation_config.json; vllm: "
        "none (OpenAI's); a folder: its generation_config.json",
    )
    override_generation_config: str | None = Field(
        default=None,
        description='JSON over those defaults, e.g. {"temperature": 0.5, "max_new_tokens": 512}',
    )
    hf_overrides: str | None = Field(
        default=None,
        description='JSON over the checkpoint\'s config.json, e.g. {"rope_scaling": '
        '{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}',
    )
    num_gpu_blocks_override: int | None = Field(
        default=None, ge=1, description="KV cache blocks to allocate, whatever the memory says"
    )
    # vLLM's parallelism flags: one worker is one device, so only 1 is meaningful; more
    # data parallelism is more workers (see `data_parallel_size`).
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    data_parallel_size: int = Field(
        default=1, ge=1, description="`conveyor serve` starts this many engine workers"
    )
    speculative_config: str | None = Field(
        default=None,
        description='vLLM\'s JSON, e.g. {"method": "ngram", "num_speculative_tokens": 4}',
    )
    lora_modules: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="LoRA adapters served next to the model, each name=path (a PEFT folder) "
        'or vLLM\'s JSON {"name": ..., "path": ...}; clients ask for them by name',
    )
    enable_lora: bool = Field(
        default=False,
        description="vLLM's flag, accepted for compatibility: --lora-modules alone enables LoRA",
    )
    max_lora_rank: int = Field(
        default=DEFAULT_MAX_LORA_RANK, ge=1, description="the highest adapter rank accepted"
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        description="vLLM's flag, accepted for compatibility: every adapter stays resident "
        "and any number of them share a batch",
    )
    allow_runtime_lora_updating: bool = Field(
        default=False,
        validation_alias=AliasChoices(
            "CONVEYOR_ALLOW_RUNTIME_LORA_UPDATING",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
        ),
        description="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter "
        "(vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING is read too)",
    )
    enable_sleep_mode: bool = Field(
        default=False,
        description="enable POST /sleep, POST /wake_up and GET /is_sleeping (vLLM's sleep "
        "mode: free the device's memory while the model is idle); with server_dev_mode, "
        "as in vLLM",
    )
    server_dev_mode: bool = Field(
        default=False,
        validation_alias=AliasChoices("CONVEYOR_SERVER_DEV_MODE", "VLLM_SERVER_DEV_MODE"),
        description="enable vLLM's development endpoints: POST /reset_prefix_cache, "
        "/pause, /resume, /abort_requests, GET /is_paused, the weight-transfer ones, and "
        "sleep mode's with enable_sleep_mode; the admin key's alone when one is set "
        "(vLLM's VLLM_SERVER_DEV_MODE is read too)",
    )
    weight_transfer_config: str | None = Field(
        default=None,
        description='vLLM\'s JSON, {"backend": "disk"}: with server_dev_mode, POST '
        "/update_weights reads a trainer's checkpoint folder into the served model",
    )
    structured_outputs_config: str | None = Field(
        default=None,
        description='vLLM\'s JSON, {"backend": "xgrammar", "disable_any_whitespace": true}: '
        "constraints are compiled with llguidance whatever the backend; "
        "disable_any_whitespace makes JSON output compact; a reasoning_parser here is "
        "--reasoning-parser's (conveyor/structured_outputs_config.py)",
    )
    profiler_config: str | None = Field(
        default=None,
        description='vLLM\'s JSON, {"profiler": "torch", "torch_profiler_dir": "/traces"}: '
        "POST /start_profile and /stop_profile record a torch trace on every worker",
    )
    torch_profiler_dir: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CONVEYOR_TORCH_PROFILER_DIR", "VLLM_TORCH_PROFILER_DIR"),
        description="the older way to turn the profiler endpoints on: the trace folder "
        "(vLLM's VLLM_TORCH_PROFILER_DIR is read too)",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        description="the most LoRA adapters loaded at once (start-up and run time; on a GPU "
        "room for them is kept out of the KV cache); default: no limit",
    )

    runner: Literal["auto", "generate", "pooling"] = Field(
        default="auto",
        description="generate: text; pooling: embeddings (/v1/embeddings); auto: pooling "
        "for a checkpoint without an LM head (LlamaModel, ...), else generate",
    )
    convert: Literal["auto", "none", "embed"] = Field(
        default="auto", description="vLLM's flag: embed serves a text model as embeddings"
    )
    task: Literal["auto", "generate", "embed", "embedding"] | None = Field(
        default=None, description="vLLM's older spelling: embed (embedding) is --runner pooling"
    )
    pooler_config: str | None = Field(
        default=None,
        description='embedding pooling, vLLM\'s JSON: {"pooling_type": "LAST"|"MEAN"|"CLS", '
        '"normalize": true}; default: the model\'s sentence-transformers files, else LAST',
    )

    # --- serving -------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    uds: str | None = Field(
        default=None,
        description="serve the API on this Unix domain socket instead of --host and --port",
    )
    api_server_count: int = Field(
        default=1, ge=1, description="API processes `conveyor serve` starts on its one port"
    )
    # Set by `conveyor serve` for those processes: the listening socket they share.
    api_socket_fd: int | None = None
    # Set by `conveyor serve` for its children: its pid, so a child whose supervisor died
    # (SIGKILL; the kernel sends PR_SET_PDEATHSIG's SIGTERM) stops without a drain.
    supervisor_pid: int | None = None
    # vLLM's --api-key K1 K2 (any of them) and VLLM_API_KEY, read too so a server moved
    # over from `vllm serve` with its environment is not left open.
    api_key: Annotated[list[SecretStr], NoDecode] | None = Field(
        default=None,
        # Only the prefixed names: an alias skips env_prefix, so "api_key" would read
        # any API_KEY the environment holds for something else.
        validation_alias=AliasChoices("CONVEYOR_API_KEY", "VLLM_API_KEY"),
        description="require `Authorization: Bearer <key>` (any of these keys) on /v1 and "
        "the other inference paths (vLLM's VLLM_API_KEY is read too)",
    )
    redis_url: str | None = Field(
        default=None, description="external Redis; unset: `conveyor serve` embeds one"
    )
    redis_prefix: str = "conveyor"
    instance_id: str | None = Field(
        default=None, description="this process's name on the bus; default host-pid-random"
    )
    max_queued_requests: int = Field(
        default=1024,
        ge=0,
        description="the most requests that may wait in a model's lane for a worker; more "
        "get a 503 overloaded at once (checked as each is queued, so bursts too; a "
        "request's prompts and choices are admitted together, and an empty lane admits "
        "any request)",
    )
    request_timeout: float = Field(default=600.0, description="seconds before a request expires")
    worker_loss_timeout: float = Field(
        default=120.0,
        ge=0,
        description="seconds an accepted request waits for its model to have a live worker "
        "again (a crashed worker restarting resumes it) before it ends with a 503 "
        "no_worker instead of waiting out --request-timeout (0: at the first check that "
        "finds none; inf: never); allow for a crashed worker's model load",
    )
    result_ttl: float = Field(default=600.0, description="seconds a final result stays readable")
    max_body_bytes: int = 4 << 20
    max_upload_bytes: int = Field(
        default=200 << 20, description="largest file accepted by POST /v1/files (streamed to disk)"
    )
    max_project_storage_bytes: int = Field(
        default=100 << 30,
        ge=0,
        description="most bytes of files one project may keep (its uploads and batch "
        "results): an upload past it is refused, so no tenant fills the disk for the "
        "others; 0: no limit",
    )
    tool_call_parser: (
        Literal[
            "hermes",
            "llama3_json",
            "llama4_json",
            "pythonic",
            "llama4_pythonic",
            "mistral",
            "openai",
            "qwen3_coder",
            "qwen3_xml",
            "seed_oss",
            "granite",
            "phi4_mini_json",
            "olmo3",
        ]
        | None
    ) = Field(
        default=None,
        description='reads tool calls out of model text, enabling tool_choice "auto" '
        "(hermes: <tool_call> JSON blocks, as Hermes and Qwen models write them; "
        "llama3_json: the answer as JSON calls, as Llama 3.1-3.3 write them; "
        "pythonic: the answer as a Python list of calls, as Llama 3.2 and 4 write them; "
        "mistral: calls after the [TOOL_CALLS] token, as Mistral models write them; "
        "openai: harmony messages to functions.NAME, as gpt-oss writes them; "
        "qwen3_coder, or qwen3_xml: <function=NAME><parameter=KEY> calls, as "
        "Qwen3-Coder writes them; seed_oss: the same in <seed:tool_call> blocks, as "
        "Seed-OSS writes them; granite: a JSON list after <tool_call>, as Granite 3 "
        "writes it; phi4_mini_json: functools[...], as Phi-4-mini writes it; olmo3: "
        "Python calls in <function_calls>, as OLMo 3 writes them; llama4_json and "
        "llama4_pythonic: llama3_json's and pythonic's formats, as Llama 4 writes them)",
    )
    reasoning_parser: (
        Literal["deepseek_r1", "qwen3", "olmo3", "seed_oss", "openai_gptoss"] | None
    ) = Field(
        default=None,
        description="separates a reasoning model's thinking from its answer in chat "
        "(deepseek_r1: <think>...</think>, as DeepSeek-R1, its distills and QwQ write it, "
        "the output starting inside the block; qwen3: the same tags, thinking only when a "
        "<think> is open in the prompt or at the output's start, as Qwen3 writes it; "
        "olmo3: read as qwen3, as OLMo 3 Think writes it; "
        "seed_oss: read as qwen3 with <seed:think> tags, as Seed-OSS writes them; "
        "openai_gptoss: harmony's analysis channel, as gpt-oss writes it, which gpt-oss "
        "models get without the flag); "
        "the thinking goes out as `reasoning` (and vLLM's older `reasoning_content`)",
    )
    enable_reasoning: bool = Field(
        default=False,
        description="vLLM's older flag, accepted for compatibility: the parser alone enables it",
    )
    enable_auto_tool_choice: bool = Field(
        default=False,
        description="vLLM's flag, accepted for compatibility: the parser alone enables auto",
    )
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 5.0
    janitor_interval: float = 2.0
    janitor_idle: float = Field(
        default=15.0, description="seconds a delivered request may sit unacked before reclaim"
    )
    max_deliveries: int = 3
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="seconds a stopping API or worker keeps finishing in-flight requests "
        "(the API then answers what is left with a 503 shutting_down)",
    )

    # --- tenancy ---------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset: SQLite at <data_dir>/conveyor.db"
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="enables the /v1/organization admin API and requires a key on /v1",
    )
    log_prompts: bool = Field(default=False, description="store prompt text in request_logs")
    return_tokens_as_token_ids: bool = Field(
        default=False, description="logprobs name tokens `token_id:N` unless a request says"
    )
    prefix_cache_scope: Literal["project", "global"] = Field(
        default="project",
        description="project: requests share cached prompt blocks only within their "
        "project, so no tenant can detect another's prompts through cached_tokens or "
        "timing; global: across projects too (one tenant's traffic warms the others')",
    )
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        default="priority",
        description="priority: requests' `priority` orders admission and preemption; fcfs: "
        "arrival order only, and a request naming another priority is a 400 (vLLM's default)",
    )
    response_role: str = Field(
        default="assistant",
        min_length=1,
        description="the role of a chat answer's message (when the request adds the "
        "generation prompt; otherwise the last message's role, as in vLLM)",
    )
    enable_force_include_usage: bool = Field(
        default=False, description="every stream ends with a usage chunk, asked for or not"
    )
    default_chat_template_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="JSON object every chat template is given, under a request's own "
        'chat_template_kwargs (the request wins key by key), e.g. {"enable_thinking": '
        "false} to turn Qwen3's thinking off unless a request turns it on",
    )
    middleware: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="import paths of ASGI middleware classes or async (request, call_next) "
        "functions to add to the API, as vLLM's --middleware (a JSON list or a,b)",
    )
    enable_tokenizer_info_endpoint: bool = Field(
        default=False,
        description="serve GET /tokenizer_info: a model's tokenizer_config.json and chat "
        "template (off by default: it shows the template)",
    )
    exclude_tools_when_tool_choice_none: bool = Field(
        default=False,
        description='leave the tools out of the prompt of a request with tool_choice "none" '
        "(by default the model sees them, as at OpenAI)",
    )
    enable_log_requests: bool = Field(
        default=False, description="log each request the API queues: model, params, prompt ids"
    )
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        default="auto",
        description="how message content reaches the chat template (vLLM's flag): auto and "
        "string, one string of the text parts joined; openai, a list of text parts",
    )
    enable_log_outputs: bool = Field(
        default=False,
        description="with enable_log_requests, also log what each request generated: its "
        "text, token ids and finish reason (vLLM's flag)",
    )
    max_log_len: int | None = Field(
        default=None,
        ge=0,
        description="prompt token ids (and output characters and token ids) shown per "
        "logged request (all)",
    )
    disable_log_stats: bool = Field(
        default=False, description="no periodic throughput / queue / KV cache log lines"
    )
    log_stats_interval: float = Field(
        default=10.0, gt=0, description="seconds between a busy worker's stats log lines"
    )
    # --- HTTP front end (vLLM's names) --------------------------------------------------
    # A JSON list (vLLM's form) or `a,b`, on the command line and in env vars alike.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    allowed_methods: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    allowed_headers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    root_path: str = Field(
        default="", description="the path prefix a reverse proxy serves the API under"
    )
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int = Field(
        default=0, ge=0, le=2, description="client certificates: 0 none, 1 optional, 2 required"
    )
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = Field(
        default="INFO",
        validation_alias=AliasChoices("CONVEYOR_LOG_LEVEL", "VLLM_LOGGING_LEVEL"),
        description="what conveyor logs; `conveyor serve`'s children log at it too "
        "(vLLM's VLLM_LOGGING_LEVEL is read too)",
    )
    log_config_file: Path | None = Field(
        default=None,
        description="a logging.config.dictConfig JSON file that sets up every conveyor "
        "process's logging (uvicorn's loggers included) instead of --log-level's lines",
    )
    uvicorn_log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] | None = (
        Field(default=None, description="uvicorn's loggers (access lines); default: --log-level")
    )
    disable_uvicorn_access_log: bool = Field(
        default=False, description="no log line per HTTP request from uvicorn"
    )
    http_header_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a connection may take to send a request's headers before it "
        "is closed (a silent or slowloris client holds a socket until then)",
    )
    disable_fastapi_docs: bool = Field(
        default=False, description="no /docs, /redoc or /openapi.json"
    )
    log_flush_interval: float = Field(
        default=1.0, description="seconds between request-log flushes: the most a crash loses"
    )
    log_buffer_max_rows: int = Field(
        default=100_000, description="request logs held while the database is unreachable"
    )
    key_cache_ttl: float = Field(
        default=1.0, description="seconds an API key lookup is trusted (revocation delay)"
    )
    response_retention_days: float = Field(
        default=30.0,
        ge=0,
        description="days a stored Responses API object is kept, as OpenAI keeps them (0: forever)",
    )
    purge_interval: float = Field(
        default=3600.0,
        gt=0,
        description="seconds between purges of expired stored responses and files (their "
        "rows; an expired file is gone to every call at once)",
    )

    # --- batches -----------------------------------------------------------------------
    service_key: SecretStr | None = Field(
        default=None,
        description="secret batch workers present to the API to run lines for a project; "
        "default: the admin key",
    )
    batch_api_url: str | None = Field(
        default=None, description="where batch workers send lines; default: this host's API"
    )
    batch_max_inflight: int = Field(
        default=16, description="lines of one batch in the queue or the engine at once"
    )
    batch_worker_concurrency: int = Field(
        default=2, description="batches one batch-worker process runs at once"
    )
    batch_max_lines: int = 50_000
    batch_line_attempts: int = Field(
        default=3, description="tries for a line that times out (504) before it counts as failed"
    )
    batch_lease_ttl: float = Field(
        default=30.0, description="seconds before a silent batch worker's batch is taken over"
    )
    batch_sweep_interval: float = Field(
        default=10.0, description="seconds between looks for batches nobody is running"
    )
    batch_requeue_after: float = Field(
        default=600.0,
        gt=0,
        description="seconds a batch waiting in the task queue is left alone by the sweeper "
        "before it is queued again (matters only if the broker lost its message)",
    )

    @classmethod
    def field_named(cls, name: str) -> str:
        """The setting a name stands for: itself, or the field an alias (an error's
        location for a value read from CONVEYOR_API_KEY, say) belongs to."""
        if name in cls.model_fields:
            return name
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices) and name in alias.choices:
                return field_name
        return name

    @classmethod
    def env_var_setting(cls, name: str) -> str | None:
        """The environment variable a setting was read from (CONVEYOR_X, or an alias such
        as VLLM_API_KEY), if one is set: so an error can name where the bad value came from."""
        name = cls.field_named(name)
        field = cls.model_fields.get(name)
        if field is None:
            return None
        alias = field.validation_alias
        names = (
            [a for a in alias.choices if isinstance(a, str) and a.isupper()]
            if isinstance(alias, AliasChoices)
            else [f"CONVEYOR_{name.upper()}"]
        )
        return next((env for env in names if env in os.environ), None)

    @classmethod
    def choices(cls, name: str) -> list[str]:
        """The values a setting typed as a Literal (or an optional one) accepts: the CLI's
        choices, from one list."""
        annotation = cls.model_fields[name].annotation
        if get_origin(annotation) is Literal:
            return list(get_args(annotation))
        literals = [a for a in get_args(annotation) if get_origin(a) is Literal]
        return [value for literal in literals for value in get_args(literal)]

    @model_validator(mode="after")
    def _auto_tools_need_a_parser(self) -> Settings:
        if self.enable_reasoning and self.reasoning_parser is None:
            names = ", ".join(self.choices("reasoning_parser"))
            raise ValueError(f"--enable-reasoning needs --reasoning-parser ({names})")
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            names = ", ".join(self.choices("tool_call_parser"))
            raise ValueError(f"--enable-auto-tool-choice needs --tool-call-parser ({names})")
        return self

    @field_validator("allow_runtime_lora_updating", "server_dev_mode", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        """VLLM_ALLOW_RUNTIME_LORA_UPDATING= (set but empty) means off, as in vLLM; so
        does VLLM_SERVER_DEV_MODE=."""
        return False if value == "" else value

    @model_validator(mode="after")
    def _lora_modules_parse(self) -> Settings:
        """A bad entry stops start-up here, not in a worker after the model loaded."""
        if self.enable_lora and not self.lora_modules and not self.allow_runtime_lora_updating:
            raise ValueError(
                "--enable-lora needs --lora-modules (adapters loaded at start-up) or "
                "--allow-runtime-lora-updating (adapters loaded through the API)"
            )
        self.lora_config()  # its LoRAConfigError is a ValueError
        return self

    @model_validator(mode="before")
    @classmethod
    def _reasoning_parser_of_structured_outputs(cls, data: Any) -> Any:
        """vLLM's `--structured-outputs-config '{"reasoning_parser": ...}'` names the
        reasoning parser too: taken as --reasoning-parser, which must agree if given."""
        if not isinstance(data, dict) or data.get("structured_outputs_config") is None:
            return data
        named = StructuredOutputsConfig.parse(data["structured_outputs_config"]).reasoning_parser
        given = data.get("reasoning_parser")
        if not named or named == given:
            return data
        if given is not None:
            raise ValueError(
                f"--structured-outputs-config names reasoning_parser {named!r} but "
                f"--reasoning-parser is {given!r}"
            )
        return {**data, "reasoning_parser": named}

    @property
    def structured_outputs(self) -> StructuredOutputsConfig:
        return StructuredOutputsConfig.parse(self.structured_outputs_config)

    @model_validator(mode="after")
    def _profiler_config_reads(self) -> Settings:
        self.profiler  # noqa: B018 (raises for a config not served)
        return self

    @property
    def profiler(self) -> ProfilerConfig | None:
        """--profiler-config (or the older profiler folder): None, the endpoints off."""
        return ProfilerConfig.parse(self.profiler_config, self.torch_profiler_dir)

    @model_validator(mode="after")
    def _weight_transfer_is_disk(self) -> Settings:
        self.weight_transfer_backend  # noqa: B018 (raises for a backend not served)
        return self

    @property
    def weight_transfer_backend(self) -> str | None:
        """--weight-transfer-config's backend: "disk", the one conveyor serves (vLLM's
        nccl and ipc hand tensors over from a trainer on the same GPUs), or None."""
        if self.weight_transfer_config is None:
            return None
        value = read_json_flag("--weight-transfer-config", self.weight_transfer_config)
        backend = value.get("backend", "nccl") if isinstance(value, dict) else None
        if backend != "disk":
            raise ValueError(
                f"--weight-transfer-config: backend {backend!r} is not served; "
                '{"backend": "disk"} reads each update from a checkpoint folder'
            )
        return backend

    @model_validator(mode="after")
    def _runner_is_consistent(self) -> Settings:
        self.resolved_runner  # noqa: B018 (raises for flags that contradict each other)
        PoolerConfig.parse(self.pooler_config)  # its PoolerConfigError is a ValueError
        return self

    @property
    def resolved_runner(self) -> str:
        """--runner, with vLLM's --convert embed and older --task embed folded in."""
        wants: set[str] = set()
        if self.convert == "embed" or self.task in ("embed", "embedding"):
            wants.add("pooling")
        if self.task == "generate":
            wants.add("generate")
        if self.runner != "auto":
            wants.add(self.runner)
        if len(wants) > 1:
            raise ValueError(
                f"--runner {self.runner}, --convert {self.convert} and --task {self.task} "
                "contradict each other"
            )
        return wants.pop() if wants else "auto"

    def lora_config(self) -> LoRAConfig | None:
        if not self.lora_modules and not self.allow_runtime_lora_updating:
            return None
        return LoRAConfig.from_entries(
            list(self.lora_modules),
            self.max_lora_rank,
            runtime_updates=self.allow_runtime_lora_updating,
            max_loaded=self.max_cpu_loras,
        )

    @field_validator(
        "max_model_len",
        "max_num_batched_tokens",
        "long_prefill_token_threshold",
        "kv_cache_memory_bytes",
        mode="before",
    )
    @classmethod
    def _human_readable(cls, value: object) -> object:
        return human_readable_int(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("uds")
    @classmethod
    def _uds_expanded(cls, value: str | None) -> str | None:
        if not value:
            return None
        path = os.path.expanduser(value)
        if len(os.fsencode(path)) >= _UNIX_PATH_MAX:  # the kernel's sun_path, NUL included
            raise ValueError(f"a Unix socket path is under {_UNIX_PATH_MAX} bytes: {path}")
        return path

    @field_validator("data_dir", "download_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator(
        "allowed_origins", "allowed_methods", "allowed_headers", "middleware", mode="before"
    )
    @classmethod
    def _json_or_comma_list(cls, value: object) -> object:
        return json_or_comma_list(value) if isinstance(value, str) else value

    @field_validator("hf_token", mode="before")
    @classmethod
    def _empty_token_is_the_default(cls, value: object) -> object:
        """`--hf-token` without a value (vLLM's: use the stored login) arrives empty."""
        return None if value == "" else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _one_or_more_keys(cls, value: object) -> object:
        """One key (a flag, CONVEYOR_API_KEY or VLLM_API_KEY), or several: a list, or the
        JSON list `conveyor serve` hands its children; none at all is no key."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value == "":  # VLLM_API_KEY= (set, empty): no key, as vLLM reads it
            return None
        if isinstance(value, str):
            # A key file (CONVEYOR_API_KEY_FILE) may hold one key per line.
            value = _json_key_list(value) or [line for line in value.splitlines() if line]
        if isinstance(value, list | tuple):
            keys = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in value]
            if any(not isinstance(k, str) or not k.strip() for k in keys):
                raise ValueError("an API key must be a non-empty string")
            if any(len(k.split()) != 1 or k != k.strip() for k in keys):
                # No client can send it in `Authorization: Bearer`: every call would 401.
                raise ValueError("an API key must not contain spaces or line breaks")
            return keys or None
        return value

    @field_validator("default_chat_template_kwargs", mode="before")
    @classmethod
    def _template_kwargs_parse(cls, value: object) -> object:
        if value is None or isinstance(value, str | Mapping):
            return parse_default_template_kwargs(value) or None
        return value

    @field_validator("hf_overrides")
    @classmethod
    def _hf_overrides_parse(cls, value: str | None) -> str | None:
        parse_hf_overrides(value)
        return value

    @field_validator("override_generation_config")
    @classmethod
    def _overrides_parse(cls, value: str | None) -> str | None:
        parse_overrides(value)  # its GenerationConfigError is a ValueError
        return value

    @model_validator(mode="after")
    def _the_service_key_is_no_tenants_key(self) -> Settings:
        """The service key lets batch workers name the project a line is billed to: the
        static --api-key, which any client may hold, must not also be it (unless both are
        the admin key, whose holder may do all of that anyway)."""
        service, static = self.resolved_service_key, self.api_key
        if service is None or static is None:
            return self
        secret = service.get_secret_value()
        admin = self.admin_key.get_secret_value() if self.admin_key else None
        if any(secret == key.get_secret_value() for key in static) and secret != admin:
            raise ValueError(
                "--service-key equals --api-key: every holder of the API key could act for "
                "any project (batch lines are billed to the project they name); give the "
                "batch workers a key of their own"
            )
        return self

    @model_validator(mode="after")
    def _a_key_needs_its_certificate(self) -> Settings:
        # A certfile alone may hold the key too (uvicorn loads it so); a key alone cannot work.
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("--ssl-keyfile needs --ssl-certfile (HTTPS)")
        return self

    @field_validator("ssl_keyfile", "ssl_certfile", "ssl_ca_certs")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        return str(Path(value).expanduser()) if value else value

    @model_validator(mode="after")
    def _one_device_per_worker(self) -> Settings:
        for flag, size in (
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--pipeline-parallel-size", self.pipeline_parallel_size),
        ):
            if size > 1:
                raise ValueError(
                    f"{flag} {size}: a conveyor worker runs a model on one device; serve a "
                    "model too big for one with --quantization fp8 or a quantized checkpoint, "
                    "and scale out with --data-parallel-size (more workers, one device each)"
                )
        if self.data_parallel_size > 1 and ":" in (self.device or ""):
            raise ValueError(
                f"--device {self.device} pins one GPU, but --data-parallel-size "
                f"{self.data_parallel_size} gives worker i GPU i: pass --device cuda"
            )
        return self

    @field_validator("speculative_config")
    @classmethod
    def _speculative_config_parses(cls, value: str | None) -> str | None:
        """A bad config stops start-up here, not in a worker after the model loaded."""
        if value is not None:
            SpeculativeConfig.parse(value)  # its SpeculativeConfigError is a ValueError
        return value

    @property
    def resolved_database_url(self) -> str:
        # Imported here: SQLAlchemy is not needed to read settings.
        from conveyor.db.database import default_database_url

        return self.database_url or default_database_url(self.data_dir)

    @property
    def resolved_service_key(self) -> SecretStr | None:
        return self.service_key or self.admin_key

    @property
    def resolved_batch_api_url(self) -> str:
        if self.batch_api_url:
            return self.batch_api_url.rstrip("/")
        if self.uds:  # the socket is the address: any host name will do
            return f"{self.api_scheme}://localhost"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{self.api_scheme}://{host}:{self.port}"

    @property
    def batch_api_uds(self) -> str | None:
        """The Unix socket batch workers reach this host's API through (--uds), if any."""
        return self.uds if self.batch_api_url is None else None

    @property
    def api_address(self) -> str:
        """Where the API listens, for log lines."""
        if self.uds:
            return f"on unix:{self.uds} ({self.api_scheme})"
        return f"on {self.api_scheme}://{self.host}:{self.port}"

    def check_listen_files(self) -> None:
        """FileNotFoundError naming the flag of a file the API needs to listen that is not
        there (a certificate, a key, the --uds socket's folder): one line at start-up, not
        uvicorn failing in a child that is then restarted in vain."""
        for flag, path in (
            ("--ssl-certfile", self.ssl_certfile),
            ("--ssl-keyfile", self.ssl_keyfile),
            ("--ssl-ca-certs", self.ssl_ca_certs),
        ):
            if path is not None and not Path(path).is_file():  # `~` expanded on reading
                raise FileNotFoundError(f"{flag} {path}: no such file")
        if self.uds is not None and not Path(self.uds).parent.is_dir():
            raise FileNotFoundError(f"--uds {self.uds}: its folder does not exist")
        if self.ssl_certfile is not None:
            self._check_certificate(self.ssl_certfile, self.ssl_keyfile)

    @staticmethod
    def _check_certificate(certfile: str, keyfile: str | None) -> None:
        """ValueError when the certificate and key do not load as a pair (a key that does
        not match, a certificate given as the key, an encrypted key): uvicorn's SSLError
        in every API process, each restarted in vain, said here in one line."""
        import ssl

        def no_password() -> bytes:
            raise ValueError("the key is encrypted, and conveyor takes no key password")

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(certfile, keyfile, password=no_password)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile or certfile}: "
                f"cannot serve TLS with them ({exc})"
            ) from None

    @property
    def api_scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"

    @property
    def batch_api_verify(self) -> bool:
        """Whether batch workers check the API's certificate: against the system's CAs for
        a --batch-api-url; not for this host's own API over loopback, whose certificate
        names the public host, not 127.0.0.1."""
        return self.batch_api_url is not None

    @property
    def requires_key(self) -> bool:
        """With a static key or the admin API on, every /v1 call must carry a key."""
        return self.api_key is not None or self.admin_key is not None

    def resolved_instance_id(self, role: str) -> str:
        """A stable-for-this-process name for a bus participant."""
        if self.instance_id:
            return self.instance_id
        return f"{role}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"

    def engine_config(self) -> EngineConfig:
        # Imported here: engine.config pulls in torch, which API processes never load.
        from engine.config import EngineConfig

        return EngineConfig(
            model=self.model,
            tokenizer=self.tokenizer,
            revision=self.revision,
            tokenizer_revision=self.tokenizer_revision,
            download_dir=self.download_dir,
            hf_token=self.hf_token.get_secret_value() if self.hf_token is not None else None,
            served_model_name=self.served_model_name,
            device=self.device,
            cpu_threads=self.cpu_threads,
            dtype=self.dtype,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            background_prefill_tokens=self.batch_prefill_tokens,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            kv_cache_memory=self.kv_cache_memory,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            compact_json=self.structured_outputs.compact_json,
            kv_cache_dtype=self.kv_cache_dtype,
            quantization=self.quantization,
            gpu_memory_utilization=self.gpu_memory_utilization,
            chat_template=self.chat_template,
            attention_backend=self.attention_backend,
            enforce_eager=self.enforce_eager,
            data_dir=self.data_dir,
            seed=self.seed,
            max_logprobs=self.max_logprobs,
            logprobs_mode=self.logprobs_mode,
            num_kv_blocks=self.num_gpu_blocks_override,
            speculative_config=(
                SpeculativeConfig.parse(self.speculative_config)
                if self.speculative_config
                else None
            ),
            lora_config=self.lora_config(),
            runner=self.resolved_runner,
            pooler_config=self.pooler_config,
            hf_overrides=self.hf_overrides,
        )
