"""The TTFT the queue adds, measured in pairs so the machine's drift cancels out.

On this 2-core box a 128-token prefill takes 170-240 ms depending on the
minute, so two medians taken minutes apart (serve, then the in-process
engine) differ by more than the ~10 ms being measured. Here each pair sends
the same prompt to `conveyor serve` and to an in-process engine built from
the same settings, back to back, alternating which goes first, and the
figure is the median of the per-pair differences.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.serve import RequestShape, percentile, run_inprocess, run_load


def measure_paired_ttft(
    base_url: str,
    shape: RequestShape,
    headers: dict[str, str],
    llm: Any,
    ids: Callable[[str], list[int]],
    prompts: list[str],
) -> dict[str, Any]:
    """One JSON line: both TTFT medians and the median per-pair difference (ms)."""
    served: list[float] = []
    local: list[float] = []
    errors = 0
    for i, prompt in enumerate(prompts):
        prompt_ids = ids(prompt)

        def over_http(prompt: str = prompt) -> float | None:
            results, _ = run_load(base_url, shape, [prompt], 1, headers, trust_env=False)
            return results[0].ttft

        def in_process(prompt_ids: list[int] = prompt_ids) -> float | None:
            results, _ = run_inprocess(llm, [prompt_ids], 1, shape.output_len)
            return results[0].ttft

        order = (over_http, in_process) if i % 2 == 0 else (in_process, over_http)
        measured = {fn: fn() for fn in order}
        a, b = measured[over_http], measured[in_process]
        if a is None or b is None:
            errors += 1
            continue
        served.append(a * 1000)
        local.append(b * 1000)
    diffs = [a - b for a, b in zip(served, local, strict=True)]

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 2)

    return {
        "bench": "serve",
        "target": "paired-ttft",
        "concurrency": 1,
        "pairs": len(diffs),
        "errors": errors,
        "output_len": shape.output_len,
        "conveyor_ttft_ms_p50": ms(served, 50),
        "inprocess_ttft_ms_p50": ms(local, 50),
        "queue_added_ttft_ms_p50": ms(diffs, 50),
        "queue_added_ttft_ms_p25": ms(diffs, 25),
        "queue_added_ttft_ms_p75": ms(diffs, 75),
        "queue_added_ttft_ms_mean": round(statistics.fmean(diffs), 2) if diffs else None,
    }
