"""benchmarks/paired_ttft.py against the real `conveyor serve` and a real in-process engine."""

from __future__ import annotations

from pathlib import Path

from benchmarks.paired_ttft import measure_paired_ttft
from benchmarks.serve import (
    RequestShape,
    engine_prompt_ids,
    first_model,
    load_tokenizer,
    make_prompt,
)
from engine.llm import LLM

from .conftest import Server


def test_pairs_time_both_systems_on_every_prompt(server: Server, bundled_model_dir: Path) -> None:
    llm = LLM(str(bundled_model_dir), max_num_seqs=4)
    tokenizer = load_tokenizer(bundled_model_dir)
    prompts = [make_prompt(tokenizer, 900_000 + i, 48) for i in range(3)]
    model = first_model(server.v1, {}, trust_env=False)
    shape = RequestShape("completions", model, 4, "min_tokens")
    line = measure_paired_ttft(
        server.v1, shape, {}, llm, engine_prompt_ids(llm, "completions"), prompts
    )
    assert line["target"] == "paired-ttft" and line["errors"] == 0 and line["pairs"] == 3
    served, local = line["conveyor_ttft_ms_p50"], line["inprocess_ttft_ms_p50"]
    assert served > 0 and local > 0
    # The median of differences lies between the smallest and largest possible difference.
    assert line["queue_added_ttft_ms_p25"] <= line["queue_added_ttft_ms_p50"]
    assert line["queue_added_ttft_ms_p50"] <= line["queue_added_ttft_ms_p75"]


def test_a_failing_server_counts_errors_instead_of_pairs(bundled_model_dir: Path) -> None:
    llm = LLM(str(bundled_model_dir), max_num_seqs=4)
    tokenizer = load_tokenizer(bundled_model_dir)
    shape = RequestShape("completions", "nope", 4, "min_tokens")
    line = measure_paired_ttft(
        "http://127.0.0.1:9/v1",  # nothing listens on the discard port
        shape,
        {},
        llm,
        engine_prompt_ids(llm, "completions"),
        [make_prompt(tokenizer, 1, 32)],
    )
    assert line["pairs"] == 0 and line["errors"] == 1
    assert line["queue_added_ttft_ms_p50"] is None and line["queue_added_ttft_ms_mean"] is None
