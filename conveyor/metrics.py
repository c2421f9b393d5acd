"""vLLM-named serving metrics: accumulated inside a worker, rendered by any API replica.

Workers do not serve HTTP, so a worker keeps its numbers in a `WorkerMetrics`
(plain counters under one lock, cheap enough for the publisher's hot path) and
its heartbeat writes `snapshot()` as JSON to Redis. An API replica's /metrics
reads every live worker's snapshot and renders them with
`render_worker_metrics`, through prometheus_client's data model, so the names,
labels and buckets are exactly vLLM's and existing dashboards keep working.
Nothing here imports torch: API processes import this module.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

SNAPSHOT_VERSION = 1
LABELS = ("model_name", "worker")
# The `worker` label of the requests waiting in Redis for any worker of a model.
QUEUE_WORKER_LABEL = "queue"

NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
NUM_PREEMPTIONS = "vllm:num_preemptions_total"
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"
TIME_TO_FIRST_TOKEN = "vllm:time_to_first_token_seconds"
INTER_TOKEN_LATENCY = "vllm:inter_token_latency_seconds"
E2E_REQUEST_LATENCY = "vllm:e2e_request_latency_seconds"
REQUEST_QUEUE_TIME = "vllm:request_queue_time_seconds"
REQUEST_PREFILL_TIME = "vllm:request_prefill_time_seconds"
REQUEST_DECODE_TIME = "vllm:request_decode_time_seconds"
REQUEST_INFERENCE_TIME = "vllm:request_inference_time_seconds"
REQUEST_PROMPT_TOKENS = "vllm:request_prompt_tokens"
REQUEST_GENERATION_TOKENS = "vllm:request_generation_tokens"
REQUEST_MAX_NUM_GENERATION_TOKENS = "vllm:request_max_num_generation_tokens"
REQUEST_PARAMS_N = "vllm:request_params_n"
REQUEST_PARAMS_MAX_TOKENS = "vllm:request_params_max_tokens"
ITERATION_TOKENS = "vllm:iteration_tokens_total"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits_total"
LORA_REQUESTS_INFO = "vllm:lora_requests_info"
LORA_INFO_LABELS = ("max_lora", "waiting_lora_adapters", "running_lora_adapters")
# vLLM's info gauge of the KV cache's configuration (value 1), for dashboards that read the
# block count and cache dtype from it; the labels are those of vLLM's CacheConfig it uses.
CACHE_CONFIG_INFO = "vllm:cache_config_info"
CACHE_INFO_LABELS = (
    "block_size",
    "cache_dtype",
    "enable_prefix_caching",
    "gpu_memory_utilization",
    "num_gpu_blocks",
    "num_cpu_blocks",
)

# vLLM's sleep-mode gauge: one sample per state, 1 for the state the engine is in.
ENGINE_SLEEP_STATE = "vllm:engine_sleep_state"
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")

FINISH_REASONS = ("stop", "length", "abort")

GAUGES: dict[str, str] = {
    NUM_REQUESTS_RUNNING: "Number of requests in model execution batches.",
    NUM_REQUESTS_WAITING: "Number of requests waiting to be processed.",
    KV_CACHE_USAGE: "KV-cache usage. 1 means 100 percent usage.",
}
COUNTERS: dict[str, str] = {
    PROMPT_TOKENS: "Number of prefill tokens processed.",
    GENERATION_TOKENS: "Number of generation tokens processed.",
    NUM_PREEMPTIONS: "Cumulative number of preemption from the engine.",
    SPEC_DRAFT_TOKENS: "Number of speculative draft tokens verified.",
    SPEC_ACCEPTED_TOKENS: "Number of speculative draft tokens accepted.",
    PREFIX_CACHE_QUERIES: "Prefix cache queries, in terms of number of queried tokens.",
    PREFIX_CACHE_HITS: "Prefix cache hits, in terms of number of cached tokens.",
}
SUCCESS_DOC = "Count of successfully processed requests."

# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py), so dashboards' quantiles line up.
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSpec:
    doc: str
    buckets: tuple[float, ...]


HISTOGRAMS: dict[str, HistogramSpec] = {
    TIME_TO_FIRST_TOKEN: HistogramSpec(
        "Histogram of time to first token in seconds.", _TTFT_BUCKETS
    ),
    INTER_TOKEN_LATENCY: HistogramSpec(
        "Histogram of inter-token latency in seconds.", _ITL_BUCKETS
    ),
    E2E_REQUEST_LATENCY: HistogramSpec(
        "Histogram of e2e request latency in seconds.", _REQUEST_LATENCY_BUCKETS
    ),
    REQUEST_QUEUE_TIME: HistogramSpec(
        "Histogram of time spent in WAITING phase for request.", _REQUEST_LATENCY_BUCKETS
    ),
    REQUEST_PREFILL_TIME: HistogramSpec(
        "Histogram of time spent in PREFILL phase for request.", _REQUEST_LATENCY_BUCKETS
    ),
    REQUEST_DECODE_TIME: HistogramSpec(
        "Histogram of time spent in DECODE phase for request.", _REQUEST_LATENCY_BUCKETS
    ),
    REQUEST_INFERENCE_TIME: HistogramSpec(
        "Histogram of time spent in RUNNING phase for request.", _REQUEST_LATENCY_BUCKETS
    ),
    REQUEST_PARAMS_N: HistogramSpec("Histogram of the n request parameter.", (1, 2, 5, 10, 20)),
    # Tokens one forward pass computed (prefill chunks and decodes together): how full
    # the steps are, what vLLM's dashboards plot as the batch size.
    ITERATION_TOKENS: HistogramSpec(
        "Histogram of number of tokens per engine_step.",
        (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    ),
}
# Token-count histograms: vLLM's 1-2-5 buckets up to the worker's max_model_len.
TOKEN_HISTOGRAMS: dict[str, str] = {
    REQUEST_PROMPT_TOKENS: "Number of prefill tokens processed.",
    REQUEST_GENERATION_TOKENS: "Number of generation tokens processed.",
    REQUEST_PARAMS_MAX_TOKENS: "Histogram of the max_tokens request parameter.",
    # The longest choice's tokens (n > 1: request_generation_tokens counts them all).
    REQUEST_MAX_NUM_GENERATION_TOKENS: "Histogram of maximum number of requested generation "
    "tokens.",
}
# Older names vLLM dashboards and alerts still query, served beside the current ones with
# the same samples: vLLM up to 0.10 called inter-token latency time per output token.
DEPRECATED_HISTOGRAM_NAMES: dict[str, str] = {
    INTER_TOKEN_LATENCY: "vllm:time_per_output_token_seconds",
}


def one_two_five_buckets(largest: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `largest` (vLLM's build_1_2_5_buckets)."""
    bounds: list[float] = []
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale > largest:
                return tuple(bounds)
            bounds.append(float(step * scale))
        scale *= 10


class _Histogram:
    """Per-bucket (non-cumulative) counts; the +Inf bucket is the last slot."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class WorkerMetrics:
    """One worker's metrics; every method is safe to call from any thread."""

    def __init__(
        self,
        model_name: str,
        worker: str,
        cache_info: dict[str, str] | None = None,
        max_model_len: int = 8192,
    ) -> None:
        self.model_name = model_name
        self.worker = worker
        # CACHE_INFO_LABELS' values for this worker's engine (fixed for its life).
        self.cache_info = dict(cache_info) if cache_info is not None else None
        self._lock = threading.Lock()
        self._gauges = dict.fromkeys(GAUGES, 0.0)
        self._counters = dict.fromkeys(COUNTERS, 0.0)
        self._success = dict.fromkeys(FINISH_REASONS, 0)
        self._histograms = {name: _Histogram(spec.buckets) for name, spec in HISTOGRAMS.items()}
        token_buckets = one_two_five_buckets(max_model_len)
        self._histograms.update({name: _Histogram(token_buckets) for name in TOKEN_HISTOGRAMS})
        # vLLM's lora_requests_info labels and when they were set (LoRA engines only).
        self._lora_info: dict[str, Any] | None = None
        self._sleep_state = "awake"

    def set_engine_state(
        self,
        running: int,
        waiting: int,
        kv_cache_usage: float,
        num_preemptions: int,
        spec_draft_tokens: int = 0,
        spec_accepted_tokens: int = 0,
        lora: tuple[int | None, tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> None:
        """Gauges plus the engine's own cumulative counts (preemptions, speculative
        drafts verified and accepted), sampled after a step. `lora`: (the most adapters
        that may be loaded, adapters waiting, adapters running), for a LoRA engine."""
        with self._lock:
            if lora is not None:
                max_loaded, waiting_loras, running_loras = lora
                self._lora_info = {
                    "max_lora": "" if max_loaded is None else str(max_loaded),
                    "waiting_lora_adapters": ",".join(waiting_loras),
                    "running_lora_adapters": ",".join(running_loras),
                    "time": time.time(),
                }
            self._gauges[NUM_REQUESTS_RUNNING] = float(running)
            self._gauges[NUM_REQUESTS_WAITING] = float(waiting)
            self._gauges[KV_CACHE_USAGE] = float(kv_cache_usage)
            self._counters[NUM_PREEMPTIONS] = float(num_preemptions)
            self._counters[SPEC_DRAFT_TOKENS] = float(spec_draft_tokens)
            self._counters[SPEC_ACCEPTED_TOKENS] = float(spec_accepted_tokens)

    def set_sleep_state(self, asleep: bool, level: int | None) -> None:
        """Sleep mode: awake (serving), or asleep with the weights at `level` (1:
        offloaded, 2: discarded; a KV cache asleep alone counts as neither, as in vLLM)."""
        state = "awake" if not asleep else SLEEP_STATES[level] if level in (1, 2) else ""
        with self._lock:
            self._sleep_state = state

    def engine_state(self) -> tuple[int, int, float]:
        """(running, waiting, kv_cache_usage) as last sampled, for the heartbeat."""
        with self._lock:
            g = self._gauges
            return int(g[NUM_REQUESTS_RUNNING]), int(g[NUM_REQUESTS_WAITING]), g[KV_CACHE_USAGE]

    def add_tokens(self, prompt: int = 0, generation: int = 0) -> None:
        with self._lock:
            self._counters[PROMPT_TOKENS] += prompt
            self._counters[GENERATION_TOKENS] += generation

    def token_counts(self) -> tuple[float, float]:
        """(prompt, generation) tokens processed so far."""
        with self._lock:
            return self._counters[PROMPT_TOKENS], self._counters[GENERATION_TOKENS]

    def request_finished(self, reason: str | None) -> None:
        """Count a finished request; unknown reasons count as 'stop' (the label set is fixed)."""
        key = reason if reason in FINISH_REASONS else "stop"
        with self._lock:
            self._success[key] += 1

    def add_prefix_cache(self, queried: int, hit: int) -> None:
        """A prompt's tokens looked up in the prefix cache, and how many were there."""
        with self._lock:
            self._counters[PREFIX_CACHE_QUERIES] += queried
            self._counters[PREFIX_CACHE_HITS] += hit

    def observe(self, name: str, seconds: float) -> None:
        """Record one sample (seconds, or a count) in the histogram `name` (one of
        HISTOGRAMS or TOKEN_HISTOGRAMS)."""
        with self._lock:
            self._histograms[name].observe(max(0.0, seconds))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy; the heartbeat stores it in Redis for the API's /metrics."""
        with self._lock:
            return {
                "version": SNAPSHOT_VERSION,
                "model_name": self.model_name,
                "worker": self.worker,
                "time": time.time(),
                "gauges": dict(self._gauges),
                "counters": dict(self._counters),
                "request_success": dict(self._success),
                "histograms": {
                    name: {"bounds": list(h.bounds), "counts": list(h.counts), "sum": h.sum}
                    for name, h in self._histograms.items()
                },
                "lora_info": dict(self._lora_info) if self._lora_info is not None else None,
                "cache_info": self.cache_info,
                "sleep_state": self._sleep_state,
            }


def _labels(snapshot: dict[str, Any]) -> list[str]:
    return [str(snapshot.get("model_name", "")), str(snapshot.get("worker", ""))]


class WorkerMetricsCollector(Collector):
    """Yields every worker snapshot as vLLM metric families (one sample per worker).

    Public so the API can register it next to its own queue metrics in one registry.
    Snapshots from other releases may lack a metric; missing ones are skipped. A
    snapshot marked `"live": false` (its worker's heartbeat is gone) keeps its final
    counters and histograms for a while, but no gauges: a dead worker runs nothing, so
    sums of running requests or cache usage must not count it.
    """

    def __init__(
        self, snapshots: Iterable[dict[str, Any]], queued: Mapping[str, int] | None = None
    ) -> None:
        self.snapshots = list(snapshots)
        self.live = [snap for snap in self.snapshots if snap.get("live", True)]
        # Per model: requests still in its Redis streams, which no worker has taken.
        self.queued = dict(queued or {})

    def collect(self) -> Iterator[Metric]:
        for name, doc in GAUGES.items():
            gauge = GaugeMetricFamily(name, doc, labels=LABELS)
            for snap in self.live:
                value = snap.get("gauges", {}).get(name)
                if value is not None:
                    gauge.add_metric(_labels(snap), float(value))
            if name == NUM_REQUESTS_WAITING:
                # vLLM counts every accepted request not yet running; here some wait in
                # Redis before any engine sees them: one more series per model
                # (worker="queue"), so sum by model_name is the whole wait, as vLLM's.
                for model, count in sorted(self.queued.items()):
                    gauge.add_metric([model, QUEUE_WORKER_LABEL], float(count))
            yield gauge
        for name, doc in COUNTERS.items():
            counter = CounterMetricFamily(name, doc, labels=LABELS)
            for snap in self.snapshots:
                value = snap.get("counters", {}).get(name)
                if value is not None:
                    counter.add_metric(_labels(snap), float(value))
            yield counter
        success = CounterMetricFamily(
            REQUEST_SUCCESS, SUCCESS_DOC, labels=[*LABELS, "finished_reason"]
        )
        for snap in self.snapshots:
            counts = snap.get("request_success", {})
            for reason in FINISH_REASONS:
                success.add_metric([*_labels(snap), reason], float(counts.get(reason, 0)))
        yield success
        # vLLM's info gauges: the adapters in labels, the value when they were sampled;
        # the cache's configuration in labels, the value 1.
        yield self._info_gauge(
            LORA_REQUESTS_INFO,
            "Running stats on lora requests.",
            "lora_info",
            LORA_INFO_LABELS,
            lambda info: float(info.get("time", 0.0)),
        )
        yield self._info_gauge(
            CACHE_CONFIG_INFO,
            "Information of the LLMEngine CacheConfig",
            "cache_info",
            CACHE_INFO_LABELS,
            lambda _: 1.0,
        )
        yield self._sleep_gauge()
        docs = {**{name: spec.doc for name, spec in HISTOGRAMS.items()}, **TOKEN_HISTOGRAMS}
        for name, doc in docs.items():
            yield self._histogram(name, name, doc)
            if name in DEPRECATED_HISTOGRAM_NAMES:
                yield self._histogram(
                    DEPRECATED_HISTOGRAM_NAMES[name], name, f"{doc} (deprecated name)"
                )

    def _histogram(self, exposed: str, name: str, doc: str) -> HistogramMetricFamily:
        """The snapshots' histogram `name`, served as `exposed`."""
        family = HistogramMetricFamily(exposed, doc, labels=LABELS)
        for snap in self.snapshots:
            data = snap.get("histograms", {}).get(name)
            if data:
                family.add_metric(
                    _labels(snap), _cumulative(data["bounds"], data["counts"]), data["sum"]
                )
        return family

    def _sleep_gauge(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            ENGINE_SLEEP_STATE,
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine "
            "is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means "
            "sleep level 2.",
            labels=[*LABELS, "sleep_state"],
        )
        for snap in self.live:
            current = snap.get("sleep_state")
            if isinstance(current, str):  # older workers' snapshots have none
                for state in SLEEP_STATES:
                    family.add_metric([*_labels(snap), state], float(state == current))
        return family

    def _info_gauge(
        self,
        name: str,
        doc: str,
        key: str,
        labels: tuple[str, ...],
        value: Callable[[dict[str, Any]], float],
    ) -> GaugeMetricFamily:
        """One sample per snapshot holding a `key` dict: its `labels` as labels."""
        family = GaugeMetricFamily(name, doc, labels=[*LABELS, *labels])
        for snap in self.live:
            info = snap.get(key)
            if isinstance(info, dict):
                values = [str(info.get(label, "")) for label in labels]
                family.add_metric([*_labels(snap), *values], value(info))
        return family


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        total += count
        buckets.append((floatToGoString(bound), float(total)))
    return buckets


def render_worker_metrics(
    snapshots: list[dict[str, Any]], queued: Mapping[str, int] | None = None
) -> bytes:
    """Prometheus text exposition of worker snapshots (what the API's /metrics serves),
    with each model's `queued` requests counted as waiting."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetricsCollector(snapshots, queued))
    return generate_latest(registry)
