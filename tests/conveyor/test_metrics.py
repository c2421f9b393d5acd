"""Worker metrics snapshots render as vLLM's Prometheus metrics."""

from __future__ import annotations

import json
import threading

from prometheus_client.parser import text_string_to_metric_families

from conveyor import metrics as m
from conveyor.metrics import WorkerMetrics, render_worker_metrics


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(worker: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model_name": "smol", "worker": worker, **extra}.items()))


def test_two_workers_render_with_vllm_names_labels_and_counts() -> None:
    a, b = WorkerMetrics("smol", "w1"), WorkerMetrics("smol", "w2")
    a.set_engine_state(
        running=3,
        waiting=1,
        kv_cache_usage=0.25,
        num_preemptions=2,
        spec_draft_tokens=40,
        spec_accepted_tokens=31,
    )
    a.add_tokens(prompt=10, generation=4)
    a.add_tokens(generation=6)
    a.request_finished("stop")
    a.request_finished("length")
    a.request_finished("abort")
    a.request_finished("weird")  # an unknown reason must not invent a label value
    a.observe(m.TIME_TO_FIRST_TOKEN, 0.01)  # exactly a bound: counted in le="0.01"
    a.observe(m.TIME_TO_FIRST_TOKEN, 3.0)
    a.observe(m.REQUEST_QUEUE_TIME, -0.5)  # clock skew between hosts: clamped to 0
    b.add_tokens(prompt=7)
    # Snapshots travel through Redis as JSON.
    snaps = [json.loads(json.dumps(x.snapshot())) for x in (a, b)]
    got = samples(render_worker_metrics(snaps))

    assert got[("vllm:num_requests_running", labels("w1"))] == 3
    assert got[("vllm:num_requests_waiting", labels("w1"))] == 1
    assert got[("vllm:kv_cache_usage_perc", labels("w1"))] == 0.25
    assert got[("vllm:num_preemptions_total", labels("w1"))] == 2
    assert got[("vllm:spec_decode_num_draft_tokens_total", labels("w1"))] == 40
    assert got[("vllm:spec_decode_num_accepted_tokens_total", labels("w1"))] == 31
    assert got[("vllm:spec_decode_num_accepted_tokens_total", labels("w2"))] == 0
    assert got[("vllm:prompt_tokens_total", labels("w1"))] == 10
    assert got[("vllm:prompt_tokens_total", labels("w2"))] == 7
    assert got[("vllm:generation_tokens_total", labels("w1"))] == 10
    success = {
        r: got[("vllm:request_success_total", labels("w1", finished_reason=r))]
        for r in ("stop", "length", "abort")
    }
    assert success == {"stop": 2, "length": 1, "abort": 1}
    ttft = "vllm:time_to_first_token_seconds"
    assert got[(f"{ttft}_bucket", labels("w1", le="0.005"))] == 0
    assert got[(f"{ttft}_bucket", labels("w1", le="0.01"))] == 1
    assert got[(f"{ttft}_bucket", labels("w1", le="2.5"))] == 1
    assert got[(f"{ttft}_bucket", labels("w1", le="5.0"))] == 2
    assert got[(f"{ttft}_bucket", labels("w1", le="+Inf"))] == 2
    assert got[(f"{ttft}_count", labels("w1"))] == 2
    assert abs(got[(f"{ttft}_sum", labels("w1"))] - 3.01) < 1e-9
    assert got[("vllm:request_queue_time_seconds_sum", labels("w1"))] == 0
    for name in ("vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds"):
        assert got[(f"{name}_count", labels("w2"))] == 0


def test_render_tolerates_nothing_and_partial_snapshots() -> None:
    text = render_worker_metrics([]).decode()
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert "# TYPE vllm:e2e_request_latency_seconds histogram" in text
    # A snapshot from another release that lacks most sections still renders.
    got = samples(render_worker_metrics([{"model_name": "smol", "worker": "old"}]))
    assert got[("vllm:request_success_total", labels("old", finished_reason="stop"))] == 0
    assert ("vllm:num_requests_running", labels("old")) not in got


def test_requests_queued_in_redis_count_as_waiting() -> None:
    """vLLM's num_requests_waiting counts every accepted request not yet running; here
    some wait in Redis before any engine sees them: a series per model (worker="queue")
    beside the engines', so `sum by (model_name)` is the whole wait."""
    worker = WorkerMetrics("smol", "w1")
    worker.set_engine_state(running=4, waiting=2, kv_cache_usage=0.5, num_preemptions=0)
    got = samples(render_worker_metrics([worker.snapshot()], {"smol": 7, "other": 0}))
    waiting = "vllm:num_requests_waiting"
    assert (got[(waiting, labels("w1"))], got[(waiting, labels("queue"))]) == (2, 7)
    assert got[(waiting, (("model_name", "other"), ("worker", "queue")))] == 0
    assert ("vllm:num_requests_running", labels("queue")) not in got


def test_counting_from_many_threads_loses_nothing() -> None:
    metrics = WorkerMetrics("smol", "w")

    def work() -> None:
        for _ in range(2000):
            metrics.add_tokens(generation=1)
            metrics.observe(m.INTER_TOKEN_LATENCY, 0.02)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = metrics.snapshot()
    assert snap["counters"][m.GENERATION_TOKENS] == 8000
    assert sum(snap["histograms"][m.INTER_TOKEN_LATENCY]["counts"]) == 8000


def test_lora_engines_report_vllms_lora_requests_info() -> None:
    """Adapters in labels (comma-joined, as vLLM), the sampling time as the value; a worker
    without LoRA reports none."""
    with_lora, plain = WorkerMetrics("llama", "w1"), WorkerMetrics("llama", "w2")
    with_lora.set_engine_state(1, 2, 0.1, 0, lora=(4, ("poet", "sql"), ("sql",)))
    plain.set_engine_state(1, 0, 0.1, 0)
    snapshots = [json.loads(json.dumps(w.snapshot())) for w in (with_lora, plain)]
    families = {
        f.name: f for f in text_string_to_metric_families(render_worker_metrics(snapshots).decode())
    }
    (sample,) = families[m.LORA_REQUESTS_INFO].samples
    assert sample.labels == {
        "model_name": "llama",
        "worker": "w1",
        "max_lora": "4",
        "waiting_lora_adapters": "poet,sql",
        "running_lora_adapters": "sql",
    }
    assert sample.value == snapshots[0]["lora_info"]["time"] > 0


def test_the_cache_configuration_is_vllms_info_gauge() -> None:
    """One sample per worker, value 1, the configuration in labels; snapshots from before
    it existed render without one."""
    info = {
        "block_size": "16",
        "cache_dtype": "fp8",
        "enable_prefix_caching": "True",
        "gpu_memory_utilization": "0.9",
        "num_gpu_blocks": "4096",
        "num_cpu_blocks": "None",
    }
    fp8, old = WorkerMetrics("llama", "w1", info), WorkerMetrics("llama", "w2")
    snapshots = [json.loads(json.dumps(w.snapshot())) for w in (fp8, old)]
    del snapshots[1]["cache_info"]
    families = {
        f.name: f for f in text_string_to_metric_families(render_worker_metrics(snapshots).decode())
    }
    (sample,) = families[m.CACHE_CONFIG_INFO].samples
    assert sample.labels == {"model_name": "llama", "worker": "w1", **info}
    assert sample.value == 1.0


def test_token_histograms_take_vllms_one_two_five_buckets() -> None:
    assert m.one_two_five_buckets(1024) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    assert m.one_two_five_buckets(1) == (1,)
    snap = WorkerMetrics("smol", "w", max_model_len=8192).snapshot()["histograms"]
    assert snap[m.REQUEST_PROMPT_TOKENS]["bounds"][-1] == 5000


def test_sleep_mode_is_vllms_engine_sleep_state() -> None:
    """awake, weights_offloaded (level 1) or discard_all (level 2): 1 for the state the
    engine is in, 0 for the others; a worker's snapshot from before it has no samples."""
    awake, level1, level2, kv_only, old = (WorkerMetrics("smol", f"w{i}") for i in range(5))
    level1.set_sleep_state(True, 1)
    level2.set_sleep_state(True, 2)
    kv_only.set_sleep_state(True, None)  # its weights woken, its KV cache not yet
    snapshots = [json.loads(json.dumps(w.snapshot())) for w in (awake, level1, level2, kv_only)]
    snapshots.append({k: v for k, v in old.snapshot().items() if k != "sleep_state"})
    got = samples(render_worker_metrics(snapshots))

    def state(worker: str) -> dict[str, float]:
        return {
            s: got[(m.ENGINE_SLEEP_STATE, labels(worker, sleep_state=s))] for s in m.SLEEP_STATES
        }

    assert state("w0") == {"awake": 1.0, "weights_offloaded": 0.0, "discard_all": 0.0}
    assert state("w1") == {"awake": 0.0, "weights_offloaded": 1.0, "discard_all": 0.0}
    assert state("w2") == {"awake": 0.0, "weights_offloaded": 0.0, "discard_all": 1.0}
    assert state("w3") == {"awake": 0.0, "weights_offloaded": 0.0, "discard_all": 0.0}
    assert not [k for k in got if k[0] == m.ENGINE_SLEEP_STATE and ("worker", "w4") in k[1]]
