"""LLMEngine: requests in, incremental outputs out, one `step()` at a time.

A step is schedule -> run -> postprocess. The engine knows nothing of Redis or
HTTP; a worker drives `step()` in a loop and ships the `RequestOutput`s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import lru_cache, partial

import torch

from engine.bad_words import bad_words_token_ids
from engine.beam_requests import BeamOrigin, BeamRequests
from engine.beam_search import BeamSearch
from engine.block_manager import BlockManager
from engine.config import (
    EngineConfig,
    ModelConfig,
    cpu_bf16_is_native,
    cpu_multiplies_slowly,
    resolve_dtype,
)
from engine.configuration_error import ConfigurationError
from engine.decode_graphs import DecodeGraphs, supports_graphs
from engine.detokenizer import IncrementalDetokenizer
from engine.grammar_compiler import GrammarCompiler
from engine.hf_overrides import parse_hf_overrides
from engine.kv_cache_memory import zeroed_kv_tensor
from engine.loader import ResolvedModel, resolve_model
from engine.lora_manager import LoRAManager
from engine.model_runner import ModelRunner, StepResult, load_model
from engine.models.linear import scratch_bytes
from engine.models.llama import Attention
from engine.ngram_proposer import NgramProposer
from engine.online_fp8 import wants_online_fp8
from engine.outputs import CompletionOutput, RequestOutput, RequestTimes
from engine.pooler import Pooler
from engine.pooler_config import PoolerConfig, PoolingType
from engine.pooling_params import PoolingParams, check_dimensions
from engine.sampler import TokenLogprobs
from engine.sampling_params import SamplingParamError, SamplingParams
from engine.scheduler import Scheduler
from engine.sentence_bert_config import FILE_NAME as SENTENCE_BERT_CONFIG
from engine.sentence_bert_config import max_seq_length
from engine.sequence import Sequence
from engine.sleep_mode import WEIGHTS, EngineAsleep, SleepMode
from engine.tokenizer import Tokenizer
from engine.weight_update import update_weights_from
from kernels.backend import select_attention_backend
from kernels.kv_cache_dtype import FP8_MAX, UNIT_SCALES, is_fp8, resolve_kv_cache_dtype

logger = logging.getLogger(__name__)

_CUDA_RESERVE_BYTES = 512 << 20


def cuda_kv_budget(total: int, free: int, ours: int, utilization: float, headroom: int) -> int:
    """Bytes of KV cache to allocate on a GPU.

    As vLLM means it, `utilization` is this process's share of the whole card:
    weights (`ours`, already allocated), activations and KV cache together. It
    is also capped by what is free now, so a card another process is using gets
    a smaller cache instead of an out-of-memory error half-way through start-up.
    `headroom` covers activations, CUDA graphs and the CUDA context.
    """
    by_share = int(total * utilization) - ours - headroom
    by_free = free - headroom
    if by_free < by_share:
        logger.warning(
            "only %.1f GiB of %.1f GiB GPU memory is free: the KV cache gets %.1f GiB, "
            "not the %.1f GiB gpu_memory_utilization=%.2f allows",
            free / 2**30,
            total / 2**30,
            max(by_free, 0) / 2**30,
            by_share / 2**30,
            utilization,
        )
    return min(by_share, by_free)


def fixed_cuda_kv_budget(wanted: int, free: int, headroom: int) -> int:
    """`--kv-cache-memory-bytes` on a GPU: exactly that, if it fits beside the
    activations' `headroom` in what is free now; otherwise start-up stops saying so
    (rather than an out-of-memory error at the first long batch)."""
    if wanted > free - headroom:
        raise ValueError(
            f"--kv-cache-memory-bytes asks for {wanted / 2**30:.2f} GiB of KV cache, but "
            f"only {max(free - headroom, 0) / 2**30:.2f} GiB of the {free / 2**30:.2f} GiB "
            "free is left beside activations: ask for less, or leave it out "
            "(--gpu-memory-utilization then sizes the cache)"
        )
    return wanted


# What an embedding sequence carries as sampling parameters: it never samples.
_NO_SAMPLING = SamplingParams(max_tokens=1)

# The longest pause in drafting for a sequence whose drafts keep being rejected.
SPEC_BACKOFF_MAX_TOKENS = 16


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics and health: queue sizes, KV usage, counters."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    # Speculative decoding: drafts verified, and those the model agreed with.
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    # LoRA adapters (None: the engine serves none): how many may be loaded (None: no
    # limit), and those with running and waiting sequences, sorted.
    lora_max_loaded: int | None = None
    lora_running: tuple[str, ...] | None = None
    lora_waiting: tuple[str, ...] | None = None


@dataclass
class _Request:
    """Engine-side state of one request: its choices and what they still owe."""

    request_id: str
    seqs: list[Sequence]
    unforked: list[Sequence] = field(default_factory=list)
    prompt_logprobs_sent: bool = False
    finished_time: float | None = None


class LLMEngine:
    def __init__(self, config: EngineConfig, resolved: ResolvedModel | None = None) -> None:
        self.config = config
        self.resolved = resolved or resolve_model(
            config.model,
            config.data_dir,
            tokenizer=config.tokenizer,
            revision=config.revision,
            tokenizer_revision=config.tokenizer_revision,
            download_dir=config.download_dir,
            token=config.hf_token,
        )
        self.model_name = config.served_model_name or self.resolved.name
        self.model_config = ModelConfig.from_folder(
            self.resolved.path, parse_hf_overrides(config.hf_overrides)
        )
        self.tokenizer = Tokenizer.load(self.resolved.tokenizer_dir, config.chat_template)
        self.model_config = self._with_head_token_ids(self.model_config)
        self.device = config.torch_device()
        if self.device.type == "cpu" and config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)  # process-wide: the engine is its work
            logger.info("CPU threads: %d (--cpu-threads)", config.cpu_threads)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.dtype in (None, "auto") and self.device.type == "cpu" and cpu_bf16_is_native():
            logger.info(
                "this CPU multiplies bf16 natively: --dtype bfloat16 runs about 1.5x faster "
                "than the default float32 (whose greedy output matches HF's float32 exactly)"
            )
        if self.device.type == "cpu" and cpu_multiplies_slowly(self.dtype):
            logger.warning(
                "this CPU has no native %s matmuls (no AVX512-BF16/FP16 or AMX): torch "
                "emulates them, far slower than float32; drop --dtype to run float32",
                str(self.dtype).removeprefix("torch."),
            )
        self.max_model_len = self._max_model_len()
        if self.model_config.is_encoder:
            config = self.config = self._encoder_config(config)
        self.kv_cache_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, self.dtype)
        # "generate" (text) or "pooling" (embeddings): what this engine serves.
        self.runner_kind = config.resolve_runner(self.model_config)
        self.pooler_config = self._pooler_config()
        started = time.perf_counter()
        # Chosen before the model is built: the backend also supplies its fused ops.
        backend = select_attention_backend(self.device, config.attention_backend)
        online_fp8 = wants_online_fp8(config.quantization, self.model_config.weight_quantization)
        # Kept: sleep mode's level 2 builds the model again the same way, and a weight
        # update builds a new checkpoint's so, on the host (engine/weight_update.py).
        self._build_model = partial(
            load_model,
            config=self.model_config,
            max_positions=self.max_model_len,
            dtype=self.dtype,
            ops=backend.ops,
            lm_head=self.runner_kind == "generate",
            online_fp8=online_fp8,
        )
        # The folder the served weights came from: `--model`'s, then each update's. Level
        # 2's wake reads it, so a sleep does not undo an update.
        self._weights_path = self.resolved.path
        model = self._build_model(self._weights_path, device=self.device)
        self.loras = self._lora_manager(model)
        if is_fp8(self.kv_cache_dtype):
            self._log_kv_scales(model)
        # A step's most rows: a full prefill budget, or every sequence's decode rows.
        max_rows = max(config.max_num_batched_tokens, config.max_num_seqs * self._rows_per_sequence)
        self.num_kv_blocks = self._num_kv_blocks(scratch_bytes(model, self.dtype, max_rows))
        capacity = self.num_kv_blocks * config.block_size
        if capacity < self.max_model_len:
            # On a GPU the memory may be another process's for now: worth another try.
            retry = self.device.type == "cuda" and config.num_kv_blocks is None
            raise (ValueError if retry else ConfigurationError)(
                f"the KV cache holds {capacity} tokens, fewer than max_model_len "
                f"{self.max_model_len}: raise the KV cache memory or lower max_model_len"
            )
        mc = self.model_config
        shape = (self.num_kv_blocks, config.block_size, mc.num_kv_heads, mc.head_dim)
        kv_caches = [
            (
                zeroed_kv_tensor(shape, self.kv_cache_dtype, self.device),
                zeroed_kv_tensor(shape, self.kv_cache_dtype, self.device),
            )
            for _ in range(mc.num_layers)
        ]
        self.eos_token_ids = frozenset(mc.eos_token_ids) | self.tokenizer.eos_token_ids
        self.grammars = GrammarCompiler(
            self.tokenizer, mc.vocab_size, self.eos_token_ids, compact_json=config.compact_json
        )
        # bad_words' token spellings, shared by requests that name the same words.
        self._bad_words_ids = lru_cache(maxsize=1024)(partial(bad_words_token_ids, self.tokenizer))
        # Where every layer slides, blocks behind the widest window are given back.
        windows = [w for w in mc.layer_windows if w is not None]
        all_slide = bool(windows) and len(windows) == len(mc.layer_windows)
        encoder = mc.is_encoder
        self.block_manager = BlockManager(
            self.num_kv_blocks,
            config.block_size,
            # An encoder's keys depend on the tokens after them too: no block is reusable.
            config.enable_prefix_caching and not encoder,
            window=max(windows) if all_slide else None,
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            background_priority=config.background_priority,
            background_prefill_tokens=config.background_prefill_tokens,
            long_prefill_token_threshold=config.long_prefill_token_threshold,
            whole_prompts=encoder,
        )
        decode_graphs = None
        if (
            self.device.type == "cuda"
            and supports_graphs(backend)
            and not config.enforce_eager
            and self.runner_kind == "generate"  # embedding prompts never decode
            # The torch experts read which experts a step runs on the host; Triton's
            # grouped GEMMs need no sync (kernels/triton_experts.py).
            and (not self.model_config.num_experts or backend.ops.experts_sync_free)
        ):
            decode_graphs = DecodeGraphs(
                model,
                kv_caches,
                backend,
                config.max_num_seqs,
                self.max_model_len,
                config.block_size,
                self.device,
                capture=True,
            )
            if not decode_graphs.record_or_release():
                decode_graphs = None  # every decode through the runner's eager path
        self.runner = ModelRunner(
            model,
            kv_caches,
            backend,
            config.block_size,
            self.eos_token_ids,
            self.device,
            decode_graphs,
            grammar_vocab_size=self.grammars.vocab_size,
            lora_context=self.loras.context if self.loras is not None else None,
            pooler=self._pooler(model),
            every_layer_window=self.block_manager.window,
            logprobs_mode=config.logprobs_mode,
            causal=not mc.is_encoder,
        )
        # vLLM's sleep mode: frees the weights and KV cache while idle (engine/sleep_mode.py).
        self._sleep_mode = SleepMode(
            model,
            kv_caches,
            self.block_manager,
            decode_graphs,
            reload=lambda: self._build_model(self._weights_path, device=self.device),
        )
        spec = config.speculative_config
        self.proposer = (
            NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max) if spec else None
        )
        self._requests: dict[str, _Request] = {}
        self._beams = BeamRequests(
            self._beam_sub_request,
            self._queue_alone,
            self.abort,
            self._beam_text,
            self.block_manager,
            self.runner.copy_blocks,
        )
        # Called between scheduling and the forward pass: a server's gauges can show a
        # request as running during its first step, which for a long prefill is seconds.
        self.on_scheduled: Callable[[], None] | None = None
        self.last_step_tokens = 0  # tokens the last step computed, for metrics
        self._spec_draft_tokens = 0
        self._spec_accepted_tokens = 0
        # vLLM's --seed: requests without a seed of their own draw from the default
        # generator, seeded once loading (which may draw from it) is over, so a server
        # started again answers the same unseeded requests in the same order the same way.
        torch.manual_seed(config.seed)
        logger.info(
            "engine ready: %s (%s) on %s (%s), %d KV blocks of %d tokens (%d tokens, %s), "
            "max_model_len %d, loaded in %.1f s",
            self.model_name,
            self._serves(),
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.num_kv_blocks,
            config.block_size,
            capacity,
            str(self.kv_cache_dtype).removeprefix("torch."),
            self.max_model_len,
            time.perf_counter() - started,
        )

    # --- setup ------------------------------------------------------------------------

    def _encoder_config(self, config: EngineConfig) -> EngineConfig:
        """An encoder's limits: its prompts are computed whole in one step (each token
        attends the ones after it), so a step's budget holds the longest prompt."""
        if config.lora_config is not None:
            raise ConfigurationError(
                f"LoRA adapters are not supported for encoders ({self.model_config.architecture})"
            )
        if config.max_num_batched_tokens >= self.max_model_len:
            return config
        logger.info(
            "max_num_batched_tokens raised from %d to max_model_len %d: an encoder computes "
            "each prompt whole, in one step",
            config.max_num_batched_tokens,
            self.max_model_len,
        )
        return dataclasses.replace(config, max_num_batched_tokens=self.max_model_len)

    def _with_head_token_ids(self, model_config: ModelConfig) -> ModelConfig:
        """A classifier whose head is made of tokens' LM-head rows, with those tokens' ids
        in this tokenizer (engine/classifier_tokens.py)."""
        head = model_config.classifier_head
        if head is None:
            return model_config
        vocab = self.tokenizer.hf_tokenizer.get_vocab()
        unknown = [token for token in head.tokens if token not in vocab]
        if unknown:
            raise ConfigurationError(
                f"classifier_from_token: {unknown} are not tokens of this model's vocabulary"
            )
        ids = tuple(vocab[token] for token in head.tokens)
        return dataclasses.replace(model_config, classifier_token_ids=ids)

    def _pooler(self, model: torch.nn.Module) -> Pooler | None:
        """The pooling runner's: embeddings, or a classifier's scores through its head."""
        if self.pooler_config is None:
            return None
        head = model.classify if self.model_config.is_classifier else None
        return Pooler(self.pooler_config, head=head)  # type: ignore[arg-type]

    def _serves(self) -> str:
        """What the start-up line says this engine does."""
        if self.pooler_config is None:
            return "text generation"
        pooling = self.pooler_config.pooling_type.value
        labels = self.model_config.num_labels
        if labels:
            return f"classification into {labels} label(s), {pooling} pooling"
        return f"embeddings, {pooling} pooling"

    def _pooler_config(self) -> PoolerConfig | None:
        """How prompts become embeddings (pooling runner), else None."""
        config = self.config
        if self.runner_kind != "pooling":
            if config.pooler_config is not None:
                raise ConfigurationError(
                    "pooler_config applies to the pooling runner (--runner pooling)"
                )
            return None
        if config.speculative_config is not None:
            raise ConfigurationError("speculative decoding has nothing to draft for embeddings")
        # An encoder's vector is its first ([CLS]) token's unless its files say otherwise,
        # as vLLM pools BERT-family models; a decoder's its last token's.
        default = PoolingType.CLS if self.model_config.is_encoder else PoolingType.LAST
        pooler = PoolerConfig.resolve(self.resolved.path, config.pooler_config, default)
        mc = self.model_config
        if mc.is_encoder and mc.is_classifier and pooler.pooling_type != PoolingType.CLS:
            # Its head was trained on the first token's state: another pooling scores junk.
            raise ConfigurationError(
                f"pooler_config: {mc.architecture}'s classifier head reads the first token "
                f"(CLS pooling), not {pooler.pooling_type.value}"
            )
        if pooler.use_activation is not None and not self.model_config.is_classifier:
            raise ConfigurationError(
                "pooler_config: use_activation applies to classification models; "
                f"{self.model_name} is an embedding model"
            )
        try:
            check_dimensions(pooler.dimensions, self.model_config)
        except ValueError as exc:
            raise ConfigurationError(f"pooler_config: {exc}") from None
        return pooler

    def _lora_manager(self, model: torch.nn.Module) -> LoRAManager | None:
        """LoRA layers on the model, with every --lora-modules adapter loaded."""
        lora = self.config.lora_config
        if lora is None:
            return None
        manager = LoRAManager(
            model,
            self.model_config,
            lora.max_lora_rank,
            self.dtype,
            self.device,
            max_loaded=lora.max_loaded,
        )
        for module in lora.modules:
            self._check_lora_name(module.name)
            manager.add(manager.read(module.name, module.path))
        return manager

    def _check_lora_name(self, name: str) -> None:
        if name == self.model_name:
            raise ValueError(f"LoRA adapter name {name!r} is the base model's name")

    @property
    def lora_names(self) -> tuple[str, ...]:
        """The adapters served now (readable from any thread)."""
        return self.loras.names if self.loras is not None else ()

    @property
    def lora_paths(self) -> dict[str, str]:
        """Each served adapter's folder (readable from any thread)."""
        return self.loras.paths if self.loras is not None else {}

    def load_lora(self, name: str, path: str, replace: bool = False) -> None:
        """Serve the PEFT adapter in `path` as `name` from the next step on (engine thread);
        `replace` swaps an adapter of that name for it. Raises ValueError (LoRAAdapterError)."""
        if self.loras is None:
            raise ValueError("this engine was started without LoRA (lora_config)")
        self._check_lora_name(name)
        self.loras.add(self.loras.read(name, path), replace=replace)

    def unload_lora(self, name: str) -> None:
        """Stop serving `name` to new requests; running ones finish (engine thread)."""
        if self.loras is None:
            raise ValueError("this engine was started without LoRA (lora_config)")
        self.loras.remove(name)
        self._free_retired_lora_slots()

    def _free_retired_lora_slots(self) -> None:
        assert self.loras is not None
        self.loras.free_retired(
            {
                seq.lora_slot
                for request in self._requests.values()
                for seq in request.seqs
                if seq.lora_slot is not None
            }
        )

    def _max_model_len(self) -> int:
        mc = self.model_config
        limit = mc.rope.context_length(mc.max_position_embeddings)
        source = "the model's context"
        trained = max_seq_length(self.resolved.path)
        if trained is not None and trained < limit:
            limit, source = trained, f"the max_seq_length of its {SENTENCE_BERT_CONFIG}"
        wanted = self.config.max_model_len or limit
        if wanted > limit:
            raise ConfigurationError(f"max_model_len {wanted} exceeds {source} ({limit})")
        return wanted

    def _num_kv_blocks(self, scratch: int = 0) -> int:
        """`scratch`: the dequantized copy of the largest quantized projection a long
        prefill chunk makes (`Linear.scratch_bytes`), kept out of the cache."""
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        mc = self.model_config
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_block = 2 * mc.num_layers * self.config.block_size * mc.num_kv_heads * mc.head_dim
        per_block *= torch.empty((), dtype=self.kv_cache_dtype).element_size()
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            activations = (
                self.config.max_num_batched_tokens
                * (mc.hidden_size * 8 + mc.intermediate_size * 4)
                * itemsize
            ) + scratch
            if self.runner_kind == "generate":  # an embedding engine computes no logits
                # Logits and sampler work per sampled row: with drafts, 1 + k rows each.
                activations += (
                    self.config.max_num_seqs * self._rows_per_sequence * mc.vocab_size * 16
                )
            headroom = activations + _CUDA_RESERVE_BYTES + self._runtime_lora_reserve(itemsize)
            if self.config.kv_cache_memory_bytes is not None:
                budget = fixed_cuda_kv_budget(self.config.kv_cache_memory_bytes, free, headroom)
            else:
                budget = cuda_kv_budget(
                    total,
                    free,
                    torch.cuda.memory_allocated(self.device),
                    self.config.gpu_memory_utilization,
                    headroom,
                )
        else:
            budget = self.config.kv_cache_memory_bytes or self.config.kv_cache_memory
        if budget < per_block:
            raise ValueError("not enough memory left for even one KV block")
        return budget // per_block

    def _log_kv_scales(self, model: torch.nn.Module) -> None:
        """Say where an FP8 cache's scales come from: unit scales suit keys and values of
        ordinary magnitudes, a calibrated checkpoint's keep outliers from saturating."""
        scales = [m.kv_scales for m in model.modules() if isinstance(m, Attention)]
        calibrated = sum(1 for s in scales if s != UNIT_SCALES)
        name = str(self.kv_cache_dtype).removeprefix("torch.")
        if calibrated:
            logger.info(
                "%s KV cache: the checkpoint's scales for %d of %d layers",
                name,
                calibrated,
                len(scales),
            )
        else:
            logger.info(
                "%s KV cache with scale 1.0 (the checkpoint has no k_scale/v_scale): keys "
                "and values past %g saturate",
                name,
                FP8_MAX[self.kv_cache_dtype],
            )

    def _runtime_lora_reserve(self, itemsize: int) -> int:
        """GPU bytes kept out of the KV cache for adapters loaded while serving: room for
        --max-cpu-loras adapters at --max-lora-rank, less those loaded already."""
        lora = self.config.lora_config
        if lora is None or not lora.runtime_updates or self.loras is None:
            return 0
        if lora.max_loaded is None:
            logger.warning(
                "runtime LoRA updates without --max-cpu-loras: adapters loaded while serving "
                "take GPU memory no one reserved; set it to keep room for them"
            )
            return 0
        room = max(0, lora.max_loaded - len(lora.modules))
        return room * self.loras.adapter_bytes(lora.max_lora_rank, itemsize)

    # --- requests ---------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | PoolingParams,
        priority: int = 0,
        arrival_time: float | None = None,
        lora: str | None = None,
        cache_salt: str | None = None,
    ) -> None:
        """Queue a request, for the base model or the LoRA adapter named `lora`: a
        generation (SamplingParams) or, on the pooling runner, an embedding of the
        prompt (PoolingParams); raises ValueError for input the engine cannot serve.

        Requests share prefix-cache blocks only under the same `cache_salt` (vLLM's
        field; the API salts every tenant's requests with its project), so one tenant
        can neither read nor detect another's cached prompts."""
        if self._sleep_mode.asleep:
            raise EngineAsleep(
                f"the engine is asleep ({', '.join(sorted(self._sleep_mode.asleep))}): "
                "wake it up first"
            )
        if request_id in self._requests or request_id in self._beams:
            raise ValueError(f"request id {request_id!r} is already in use")
        if lora is not None:
            if self.loras is None:
                raise ValueError(f"lora: unknown LoRA adapter {lora!r} (served: none)")
            self.loras.slot(lora)  # raises for an adapter not served
        if not prompt_token_ids:
            raise ValueError("prompt: must contain at least one token")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt: token ids must be in [0, {vocab})")
        if isinstance(params, PoolingParams):
            prompt = list(prompt_token_ids)
            self._add_embedding(
                request_id, prompt, params, priority, arrival_time, lora, cache_salt
            )
            return
        if self.runner_kind != "generate":
            raise ValueError(
                f"model: {self.model_name} is an embedding model (pooling runner): "
                "it embeds prompts and generates no text"
            )
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt_token_ids)} tokens leave no room to generate within "
                f"this model's maximum context length of {self.max_model_len} tokens"
            )
        self.prepare(params)
        if params.bad_words and params.bad_words_token_ids is None:
            ids = self._bad_words_ids(params.bad_words)
            params = dataclasses.replace(params, bad_words_token_ids=ids)
        params.validate_against_vocab(vocab, self.config.max_logprobs)
        arrival = arrival_time if arrival_time is not None else time.time()
        if params.use_beam_search:
            origin = BeamOrigin(priority, arrival, lora, cache_salt)
            self._start_beam_search(request_id, list(prompt_token_ids), params, origin)
            return
        seqs = [
            self._new_sequence(
                request_id, i, list(prompt_token_ids), params, priority, arrival, lora, cache_salt
            )
            for i in range(params.n)
        ]
        request = _Request(request_id, seqs, unforked=seqs[1:])
        self._requests[request_id] = request
        # Siblings wait for the first choice's prompt, then share its blocks (see _fork).
        self.scheduler.add(seqs[0])

    def _start_beam_search(
        self, request_id: str, prompt: list[int], params: SamplingParams, origin: BeamOrigin
    ) -> None:
        if self.config.logprobs_mode.endswith("_logits"):
            raise ValueError(
                "use_beam_search: beams are ranked by log-probabilities, and this engine's "
                f"logprobs_mode {self.config.logprobs_mode!r} reports logits"
            )
        max_new = self.max_model_len - len(prompt)
        if params.max_tokens is not None:
            max_new = min(max_new, params.max_tokens)
        eos = frozenset() if params.ignore_eos else self.eos_token_ids
        search = BeamSearch(
            width=params.n,
            max_new_tokens=max_new,
            end_token_ids=eos | frozenset(params.stop_token_ids),
            length_penalty=params.length_penalty,
            min_new_tokens=params.min_tokens,
        )
        vocab = self.model_config.vocab_size
        self._beams.start(request_id, prompt, params, search, origin, eos, vocab)

    def _beam_sub_request(
        self, sub_id: str, tokens: list[int], params: SamplingParams, origin: BeamOrigin
    ) -> Sequence:
        """One beam's next-token scoring: a one-sequence request, not yet queued."""
        return self._new_sequence(
            sub_id,
            0,
            tokens,
            params,
            origin.priority,
            origin.arrival,
            origin.lora,
            origin.cache_salt,
        )

    def _queue_alone(self, seq: Sequence) -> None:
        self._requests[seq.request_id] = _Request(seq.request_id, [seq])
        self.scheduler.add(seq)

    def _beam_text(self, prompt: list[int], tokens: list[int], params: SamplingParams) -> str:
        """A hypothesis's text, as a sampled answer with these tokens would read."""
        detokenizer = IncrementalDetokenizer(
            self.tokenizer, prompt, skip_special_tokens=params.skip_special_tokens
        )
        return detokenizer.add(tokens, check_stop=False).text_delta + detokenizer.flush()

    def _add_embedding(
        self,
        request_id: str,
        prompt: list[int],
        params: PoolingParams,
        priority: int,
        arrival_time: float | None,
        lora: str | None,
        cache_salt: str | None,
    ) -> None:
        if self.pooler_config is None:
            raise ValueError(
                f"model: {self.model_name} generates text; start it with --runner pooling "
                '(offline: LLM(model, runner="pooling")) to serve embeddings'
            )
        if len(prompt) > self.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt)} tokens exceed this model's maximum context length "
                f"of {self.max_model_len} tokens"
            )
        params.validate_against(self.model_config)
        params.check_prompt(len(prompt))
        arrival = arrival_time if arrival_time is not None else time.time()
        seq = self._new_sequence(
            request_id, 0, prompt, _NO_SAMPLING, priority, arrival, lora, cache_salt
        )
        seq.pooling = params
        # An encoder's prompt is computed whole: no cached blocks, whatever the pooling.
        seq.pools_every_row = self.pooler_config.pools_every_row or self.model_config.is_encoder
        self._requests[request_id] = _Request(request_id, [seq])
        self.scheduler.add(seq)

    def prepare(self, params: SamplingParams) -> None:
        """Compile the request's structured-output constraint and tokenize its bad_words
        (both cached); thread-safe.

        The worker's intake thread calls this first, so a big schema compiles off the
        engine thread and `add_request` finds it cached. Raises SamplingParamError.
        """
        if params.bad_words:
            self._bad_words_ids(params.bad_words)
        if params.structured_output is None:
            return
        try:
            self.grammars.prepare(params.structured_output)
        except ValueError as exc:  # StructuredOutputError, or a spec that cannot be read
            raise SamplingParamError("structured_output", str(exc)) from None

    def _new_sequence(
        self,
        request_id: str,
        index: int,
        prompt: list[int],
        params: SamplingParams,
        priority: int,
        arrival: float,
        lora: str | None = None,
        cache_salt: str | None = None,
    ) -> Sequence:
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed((params.seed + index) % 2**64)
        detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            prompt,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )
        constraint = params.structured_output
        return Sequence(
            request_id=request_id,
            index=index,
            prompt_token_ids=prompt,
            params=params,
            priority=priority,
            arrival_time=arrival,
            detokenizer=detokenizer,
            generator=generator,
            grammar=self.grammars.matcher(constraint) if constraint is not None else None,
            lora_slot=None if lora is None else self.loras.slot(lora),
            cache_root=self._cache_root(lora, cache_salt),
        )

    def _cache_root(self, lora: str | None, cache_salt: str | None) -> int | None:
        """What a sequence's first block hash chains from: equal prompts share blocks only
        under the same adapter (its weights make other KV) and the same salt."""
        root = None if lora is None else self.loras.cache_root(lora)
        if cache_salt is None:
            return root
        return hash(("cache_salt", cache_salt, root))

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; False if it was unknown or done."""
        if request_id in self._beams:
            return self._beams.abort(request_id)
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        for seq in request.seqs:
            self.scheduler.finish(seq, "abort")
        return True

    def interrupt(self, request_id: str) -> RequestOutput | None:
        """Stop a request now, as `abort` does, and answer it: each choice still running
        ends with finish_reason "abort" and the text its detokenizer held back (vLLM's
        pause with mode abort answers with what was generated). None where there is no
        such answer (an unknown or finished request, a beam search, an embedding): the
        request is aborted all the same."""
        request = self._requests.get(request_id)
        if request is None or any(seq.pooling is not None for seq in request.seqs):
            self.abort(request_id)
            return None
        outputs = []
        for seq in [*request.seqs, *request.unforked]:
            if seq.is_finished:
                continue
            self.scheduler.finish(seq, "abort")
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=seq.detokenizer.flush(),
                    token_ids=[],
                    logprobs=[] if seq.params.logprobs is not None else None,
                    finish_reason="abort",
                    stop_reason=None,
                    num_output_tokens=seq.num_output_tokens,
                )
            )
        if request.unforked:
            request.seqs.extend(request.unforked)
            request.unforked = []
        return self._request_output(request_id, outputs, time.time())

    # --- sleep mode and the prefix cache -----------------------------------------------

    @property
    def asleep(self) -> frozenset[str]:
        """The parts asleep ("weights", "kv_cache"); empty while the engine serves."""
        return self._sleep_mode.asleep

    @property
    def sleep_level(self) -> int | None:
        """The level the weights sleep at (None: awake)."""
        return self._sleep_mode.weights_level

    def sleep(self, level: int = 1) -> None:
        """Free the KV cache and put the weights away (level 1: to host memory; level 2:
        dropped, read from the checkpoint again on waking). The engine must be idle."""
        if self.has_unfinished():
            raise RuntimeError(
                f"cannot sleep with {self.num_requests} unfinished requests: finish or abort "
                "them first"
            )
        self._sleep_mode.sleep(level)

    def wake_up(self, tags: Collection[str] | None = None) -> None:
        """Wake the parts named by `tags` ("weights", "kv_cache"; all when None)."""
        self._sleep_mode.wake_up(tags)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: later prompts compute their KV afresh (benchmarks,
        and after weights change). Running requests keep the blocks they hold."""
        self.block_manager.reset_prefix_cache()

    def update_weights(self, path: str) -> None:
        """Read the weights of the checkpoint folder `path` (the served model's
        architecture and shapes: a trainer's later step) into the model in place, between
        two steps (vLLM's disk weight transfer). Requests running carry on with the new
        weights; the prefix cache is emptied (its KV came from the old ones). A folder that
        does not fit raises ValueError and changes nothing."""
        if WEIGHTS in self.asleep:
            raise ValueError("the weights are asleep (POST /sleep): wake them first")
        started = time.perf_counter()
        folder = update_weights_from(
            self.runner.model, path, partial(self._build_model, device=torch.device("cpu"))
        )
        self._weights_path = folder
        self.reset_prefix_cache()
        logger.info("weights updated from %s in %.2f s", folder, time.perf_counter() - started)

    def has_unfinished(self) -> bool:
        return bool(self._requests) or self._beams.num_requests > 0

    @property
    def num_requests(self) -> int:
        """Requests in the engine, a beam search counted once (not its sub-requests)."""
        beams = self._beams
        return len(self._requests) - beams.num_sub_requests + beams.num_requests

    def stats(self) -> EngineStats:
        s = self.scheduler.stats
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=self.block_manager.usage,
            num_kv_blocks=self.num_kv_blocks,
            num_preemptions=s.num_preemptions,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            spec_draft_tokens=self._spec_draft_tokens,
            spec_accepted_tokens=self._spec_accepted_tokens,
            **self._lora_stats(),
        )

    def _lora_stats(self) -> dict[str, object]:
        loras = self.loras
        if loras is None:
            return {}
        scheduler = self.scheduler
        return {
            "lora_max_loaded": loras.max_loaded,
            "lora_running": loras.names_of(seq.lora_slot for seq in scheduler.running),
            "lora_waiting": loras.names_of(seq.lora_slot for seq in scheduler.waiting_sequences()),
        }

    # --- the step ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, and return what changed for each request."""
        now = time.time()
        if self.proposer is not None:
            self._propose_drafts()
        plan = self.scheduler.schedule(now)
        # What this forward pass computes (vllm:iteration_tokens_total); 0 when none ran.
        self.last_step_tokens = sum(item.num_tokens for item in plan.scheduled)
        if not plan.scheduled:
            if self._beams.release_kept():
                logger.info("KV cache full: beam searches give back the blocks they kept")
            return []
        if self.on_scheduled is not None:
            self.on_scheduled()
        result = self.runner.execute(plan.scheduled)
        outputs = self._postprocess(plan.scheduled, result)
        if self._beams.num_requests:
            outputs = self._beams.absorb(outputs, time.time())
        if self.loras is not None and self.loras.retiring:
            self._free_retired_lora_slots()  # as soon as their last request finished
        return outputs

    @property
    def _rows_per_sequence(self) -> int:
        spec = self.config.speculative_config
        return 1 + (spec.num_speculative_tokens if spec is not None else 0)

    def _propose_drafts(self) -> None:
        """Drafts for each running sequence about to decode, where verifying them is exact:
        greedy rows (the model's own argmax decides) and unseeded random rows (speculative
        sampling keeps their distribution), without a grammar to advance. Seeded rows get
        none: how many numbers they draw would then depend on the batch (drafts take only
        spare budget), and a seed promises the same tokens whatever the batch."""
        spec = self.config.speculative_config
        assert self.proposer is not None and spec is not None
        for seq in self.scheduler.running:
            seq.draft_token_ids = []
            params = seq.params
            if seq.num_uncomputed_tokens != 1 or seq.grammar is not None:
                continue
            if not params.greedy and params.seed is not None:
                continue
            if seq.num_output_tokens < seq.spec_resume_at:
                continue  # backing off after rejected drafts
            room = self.max_model_len - seq.num_tokens
            if params.max_tokens is not None:
                room = min(room, params.max_tokens - seq.num_output_tokens)
            # The step adds drafts + 1 tokens: never past max_tokens or the context.
            count = min(spec.num_speculative_tokens, room - 1)
            if count > 0:
                seq.draft_token_ids = self.proposer.propose(seq.token_ids, count, owner=seq)

    def _postprocess(self, scheduled: list, result: StepResult) -> list[RequestOutput]:
        now = time.time()
        bm = self.block_manager
        touched: dict[str, list[CompletionOutput]] = {}
        embeddings: dict[str, torch.Tensor] = {}
        for item in scheduled:
            seq = item.seq
            request = self._requests[seq.request_id]
            for offset, lp in enumerate(result.prompt_logprobs.get(seq.seq_id, ())):
                seq.prompt_logprob_rows[seq.num_computed_tokens + offset] = lp
            # Drafts count once verified, below: only accepted ones have KV worth keeping.
            seq.num_computed_tokens += item.num_tokens - len(item.draft_token_ids)
            bm.register_full_blocks(seq, seq.num_computed_tokens)
            if seq.num_computed_tokens >= seq.num_prompt_tokens:
                if seq.wants_prompt_logprobs:
                    rows = seq.prompt_logprob_rows
                    seq.prompt_logprobs = [
                        None,
                        *(rows[p] for p in range(seq.num_prompt_tokens - 1)),
                    ]
                    seq.prompt_logprob_rows = {}
                if request.unforked and seq is request.seqs[0]:
                    self._fork(request, seq)
            embedding = result.pooled.get(seq.seq_id)
            if embedding is not None:
                self.scheduler.finish(seq, "stop")
                embeddings[seq.request_id] = embedding
                touched.setdefault(seq.request_id, [])
        for item, tokens, logprobs in zip(
            result.sampled, result.tokens, result.logprobs, strict=True
        ):
            seq = item.seq
            if seq.first_token_time is None:
                seq.first_token_time = now
            outputs = []
            for token, lp in zip(tokens, logprobs, strict=True):
                outputs.append(self._append_token(seq, token, lp))
                if seq.is_finished:
                    break
            if item.draft_token_ids:
                # Accepted drafts that were appended: a stop among them ends the count.
                accepted = min(len(tokens) - 1, len(outputs))
                self._spec_draft_tokens += len(item.draft_token_ids)
                self._spec_accepted_tokens += accepted
                _note_acceptance(seq, accepted)
                if not seq.is_finished:
                    # The accepted drafts' KV was computed from the right tokens: keep it.
                    seq.num_computed_tokens += accepted
                    bm.register_full_blocks(seq, seq.num_computed_tokens)
            touched.setdefault(seq.request_id, []).append(_merged(outputs))
        return [
            self._request_output(rid, outputs, now, embeddings.get(rid))
            for rid, outputs in touched.items()
        ]

    def _fork(self, request: _Request, parent: Sequence) -> None:
        """Start the other n-1 choices on the first choice's prompt blocks."""
        for child in request.unforked:
            child.num_computed_tokens = self.block_manager.fork(
                parent, child, child.num_prompt_tokens - 1
            )
            self.scheduler.add(child)
        request.unforked = []

    @staticmethod
    def _stop_token_text(seq: Sequence, token: int) -> str:
        """The text of the EOS or stop token that ends `seq`: none, unless the request
        asked for its stop in the output (vLLM decodes the token then, a special one
        as `skip_special_tokens` says)."""
        if not seq.params.include_stop_str_in_output:
            return ""
        return seq.detokenizer.add([token], check_stop=False).text_delta

    def _append_token(
        self, seq: Sequence, token: int, logprobs: TokenLogprobs | None
    ) -> CompletionOutput:
        params = seq.params
        seq.token_ids.append(token)
        finish: str | None = None
        stop_reason: str | int | None = None
        text = ""
        past_min = seq.num_output_tokens >= params.min_tokens
        grammar_end = _advance_grammar(seq, token) if seq.grammar is not None else None
        if past_min and not params.ignore_eos and token in self.eos_token_ids:
            finish = "stop"
            text = self._stop_token_text(seq, token)
        elif seq.grammar is not None and token in self.eos_token_ids:
            # The constraint offered EOS only because it is complete: end here, whatever
            # min_tokens or ignore_eos say, and keep EOS's text out of the output.
            finish = "stop"
        elif past_min and token in params.stop_token_ids:
            finish, stop_reason = "stop", token
            text = self._stop_token_text(seq, token)
        else:
            step = seq.detokenizer.add([token], check_stop=past_min)
            text = step.text_delta
            if step.stop_string is not None:
                finish, stop_reason = "stop", step.stop_string
        if grammar_end is not None and (finish is None or grammar_end[0] == "error"):
            finish, stop_reason = grammar_end
        if finish is None:
            limit = params.max_tokens
            if (limit is not None and seq.num_output_tokens >= limit) or (
                seq.num_tokens >= self.max_model_len
            ):
                finish = "length"
        if finish is not None:
            if finish == "error" or stop_reason is None or isinstance(stop_reason, int):
                text += seq.detokenizer.flush()
            self.scheduler.finish(seq, finish, stop_reason, keep_blocks=seq.keeps_blocks)
        return CompletionOutput(
            index=seq.index,
            text=text,
            token_ids=[token],
            logprobs=[logprobs] if logprobs is not None else None,
            finish_reason=finish,
            stop_reason=stop_reason,
            num_output_tokens=seq.num_output_tokens,
        )

    def _request_output(
        self,
        request_id: str,
        outputs: list[CompletionOutput],
        now: float,
        embedding: torch.Tensor | None = None,
    ) -> RequestOutput:
        request = self._requests[request_id]
        first = request.seqs[0]
        finished = not request.unforked and all(s.is_finished for s in request.seqs)
        if finished:
            del self._requests[request_id]
            request.finished_time = now
        prompt_lps = None
        if first.prompt_logprobs is not None and not request.prompt_logprobs_sent:
            prompt_lps = first.prompt_logprobs
            request.prompt_logprobs_sent = True
        first_tokens = [s.first_token_time for s in request.seqs if s.first_token_time]
        return RequestOutput(
            request_id=request_id,
            outputs=outputs,
            finished=finished,
            num_prompt_tokens=first.num_prompt_tokens,
            num_cached_tokens=first.num_cached_tokens,
            prompt_logprobs=prompt_lps,
            embedding=embedding,
            times=RequestTimes(
                arrival=first.arrival_time,
                scheduled=first.scheduled_time,
                first_token=min(first_tokens) if first_tokens else None,
                finished=request.finished_time,
            ),
        )


def _note_acceptance(seq: Sequence, accepted: int) -> None:
    """Back off where drafting keeps failing: after n steps in a row with every draft
    rejected, none for the next 2**n tokens (at most SPEC_BACKOFF_MAX_TOKENS). A
    rejected draft costs a verified position, which on a compute-bound batch is real
    time; text with nothing to look up stops paying it, copying text keeps drafting."""
    if accepted:
        seq.spec_misses = 0
        return
    seq.spec_misses += 1
    pause = min(2**seq.spec_misses, SPEC_BACKOFF_MAX_TOKENS)
    seq.spec_resume_at = seq.num_output_tokens + pause


def _merged(outputs: list[CompletionOutput]) -> CompletionOutput:
    """One step's tokens of one choice (several after accepted drafts) as one output."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    logprobs = [lp for o in outputs for lp in (o.logprobs or [])]
    return CompletionOutput(
        index=last.index,
        text="".join(o.text for o in outputs),
        token_ids=[t for o in outputs for t in o.token_ids],
        logprobs=logprobs if outputs[0].logprobs is not None else None,
        finish_reason=last.finish_reason,
        stop_reason=last.stop_reason,
        num_output_tokens=last.num_output_tokens,
    )


def _advance_grammar(seq: Sequence, token: int) -> tuple[str, str | None] | None:
    """Move the sequence's matcher past `token`: ("stop", None) once the constraint allows
    nothing more, ("error", why) if the matcher failed, else None (generation goes on).

    The sampler offers only allowed tokens, so a matcher error is not bad input but a
    grammar hitting llguidance's per-step limits (or a bug): the choice ends with
    finish_reason "error" and the reason in stop_reason, never as a silent "stop"
    with text the constraint does not match.
    """
    matcher = seq.grammar
    assert matcher is not None
    if matcher.is_error() or not matcher.consume_token(token):
        why = matcher.get_error() or f"token {token} is not allowed here"
        logger.error("request %s: structured output failed: %s", seq.request_id, why)
        return "error", f"structured output failed: {why}"
    return ("stop", None) if matcher.is_stopped() else None
