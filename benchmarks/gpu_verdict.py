"""The kernels issue's GPU targets, read from one `scripts/gpu-check.sh` run's results.

A GPU lease is short and the figures land in a folder of JSON lines; this
turns them into the report a note needs, target by target, so nothing is
read off by hand:

- the kernel tests compiled for the GPU: none failed (kernel-tests.xml);
- decode attention at batch 128 x context 4096: at least 60% of the GPU's
  peak HBM bandwidth (kernels.jsonl, best partition size);
- the engine's aggregate throughput: at least 5x HF `generate`'s best batch
  (engine-bf16.jsonl's summary);
- fp32 through the Triton kernels: HF's greedy tokens, all of them
  (engine-fp32.jsonl's summary);

and, as figures without a target, the decode table, CUDA graphs against
eager decoding, the expert GEMMs (bf16 and MXFP4) and the FP8 linear layer. Each target is met,
missed, or not measured (its stage failed, was skipped, or ran on CPU).

    python -m benchmarks.gpu_verdict OUTDIR [--device cpu]   # also OUTDIR/verdict.md

Exits 0 when every target was measured and met, 1 when one was missed, 3
when none was missed but one was not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DECODE_TARGET_PEAK_FRAC = 0.6
ENGINE_TARGET_VS_HF = 5.0
MET, MISSED, NOT_MEASURED = "met", "MISSED", "not measured"


@dataclass(frozen=True)
class Target:
    name: str
    outcome: str  # MET, MISSED or NOT_MEASURED
    detail: str


def read_lines(path: Path) -> list[dict[str, Any]]:
    """A results file's JSON lines; none when the stage wrote no file."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((line for line in reversed(lines) if line.get("system") == "summary"), None)


def kernel_tests_target(out: Path) -> Target:
    name = "kernel tests compiled for the GPU"
    report = out / "kernel-tests.xml"
    if not report.is_file():
        return Target(name, NOT_MEASURED, "no kernel-tests.xml (the stage did not finish)")
    root = ET.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return Target(name, NOT_MEASURED, "kernel-tests.xml has no test suite")
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    detail = (
        f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped"
    )
    if counts["failures"] or counts["errors"]:
        return Target(name, MISSED, detail)
    if counts["tests"] == counts["skipped"]:
        return Target(name, NOT_MEASURED, detail)
    return Target(name, MET, detail)


def decode_target(rows: list[dict[str, Any]]) -> Target:
    name = f"decode attention >= {DECODE_TARGET_PEAK_FRAC:.0%} of peak HBM at 128 x 4096"
    # Over a cache in the model's dtype, as the issue sets it (an FP8 cache's rows differ).
    at_target = [
        r
        for r in rows
        if (r.get("batch"), r.get("context")) == (128, 4096)
        and r.get("triton_gbs")
        and not str(r.get("kv_cache_dtype", "")).startswith("float8")
    ]
    if not at_target:
        return Target(name, NOT_MEASURED, "no decode row at batch 128 x context 4096")
    best = max(at_target, key=lambda r: r["triton_gbs"])
    frac = best.get("triton_peak_frac")
    detail = (
        f"{best['triton_gbs']} GB/s over {best.get('partitions')} partitions "
        f"(best of {len(at_target)} runs); SDPA on gathered KV {best.get('sdpa_gbs')} GB/s"
    )
    if frac is None:
        return Target(name, NOT_MEASURED, detail + "; the GPU's peak is not known")
    detail += f"; {frac:.0%} of {best.get('peak_gbs')} GB/s"
    return Target(name, MET if frac >= DECODE_TARGET_PEAK_FRAC else MISSED, detail)


def engine_target(lines: list[dict[str, Any]]) -> Target:
    name = f"engine aggregate >= {ENGINE_TARGET_VS_HF:g}x HF generate's best batch"
    summary = _summary(lines)
    key = next((k for k in summary or {} if k.endswith("_vs_hf_best")), None)
    if summary is None or key is None or summary[key] is None or "cuda" not in summary["device"]:
        return Target(name, NOT_MEASURED, "no GPU engine summary")
    ratio = float(summary[key])
    concurrency = key.removeprefix("aggregate").removesuffix("_vs_hf_best")
    detail = (
        f"{ratio:g}x at {concurrency} concurrent vs HF batch {summary.get('hf_best_batch')} "
        f"({summary.get('dtype')}); single stream {summary.get('single_stream_vs_hf')}x HF"
    )
    return Target(name, MET if ratio >= ENGINE_TARGET_VS_HF else MISSED, detail)


def parity_target(lines: list[dict[str, Any]]) -> Target:
    name = "fp32 greedy tokens through the Triton kernels = HF's"
    summary = _summary(lines)
    if summary is None or "greedy_tokens_compared" not in summary:
        return Target(name, NOT_MEASURED, "no fp32 engine summary with HF's tokens")
    matching, compared = summary["greedy_tokens_matching_hf"], summary["greedy_tokens_compared"]
    detail = f"{matching} of {compared} tokens on {summary.get('device')}"
    if "cuda" not in summary["device"]:
        return Target(name, NOT_MEASURED, detail + " (not a GPU)")
    return Target(name, MET if matching == compared else MISSED, detail)


def engine_ratio_rows(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[str]:
    """Per concurrency both engine runs measured: their tokens/s and first / second (decode
    graphs vs eager; --quantization fp8 vs bf16 weights)."""
    second_by = {r["concurrency"]: r for r in second if r.get("system") == "conveyor"}
    lines = []
    for row in first:
        other = second_by.get(row.get("concurrency"))
        if row.get("system") != "conveyor" or other is None:
            continue
        ratio = row["output_tok_s"] / other["output_tok_s"]
        lines.append(
            f"| {row['concurrency']} | {row['output_tok_s']} | {other['output_tok_s']} "
            f"| {ratio:.2f}x |"
        )
    return lines


def verdict(out: Path, on_gpu: bool = True) -> tuple[list[Target], str]:
    """The targets and the whole report (markdown) of one gpu-check run in `out`; a run
    not on a GPU (`--smoke`) meets no target, though it may miss one."""
    kernels = [r for r in read_lines(out / "kernels.jsonl") if r.get("kernel")]
    engine_bf16 = read_lines(out / "engine-bf16.jsonl")
    targets = [
        kernel_tests_target(out),
        decode_target(kernels),
        engine_target(engine_bf16),
        parity_target(read_lines(out / "engine-fp32.jsonl")),
    ]
    if not on_gpu:
        targets = [
            Target(t.name, NOT_MEASURED, t.detail + " (a smoke run on CPU)")
            if t.outcome == MET
            else t
            for t in targets
        ]
    report = ["# GPU check", ""]
    stages = out / "summary.txt"
    if stages.is_file():
        report += ["Stages: " + "; ".join(stages.read_text().splitlines()), ""]
    report += ["| target | outcome | measured |", "| --- | --- | --- |"]
    report += [f"| {t.name} | {t.outcome} | {t.detail} |" for t in targets]
    if kernels:
        report += [
            "",
            "Decode attention (Triton vs SDPA on gathered KV):",
            "",
            "| batch | context | KV cache | partitions | Triton GB/s | of peak | SDPA GB/s "
            "| vs SDPA |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        report += [
            f"| {r['batch']} | {r['context']} | {r.get('kv_cache_dtype', r.get('dtype'))} "
            f"| {r.get('partitions')} | {r['triton_gbs']} | {r.get('triton_peak_frac')} "
            f"| {r.get('sdpa_gbs')} | {r.get('speedup_vs_sdpa')}x |"
            for r in kernels
        ]
    ratios = engine_ratio_rows(engine_bf16, read_lines(out / "engine-bf16-eager.jsonl"))
    if ratios:
        report += [
            "",
            "Decode graphs vs eager (bf16 engine, output tokens/s):",
            "",
            "| concurrency | graphs | eager | ratio |",
            "| --- | --- | --- | --- |",
            *ratios,
        ]
    fp8_ratios = engine_ratio_rows(read_lines(out / "engine-fp8.jsonl"), engine_bf16)
    if fp8_ratios:
        report += [
            "",
            "--quantization fp8 vs bf16 weights (engine with graphs, output tokens/s):",
            "",
            "| concurrency | fp8 | bf16 | ratio |",
            "| --- | --- | --- | --- |",
            *fp8_ratios,
        ]
    experts = read_lines(out / "experts.jsonl")
    if experts:
        report += [
            "",
            "Expert GEMMs (ms; weight GB/s):",
            "",
            "| shape | tokens | Triton | torch loop | Triton quantized | quantized vs bf16 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in experts:
            shape = f"{r['experts']}x{r['hidden']}x{r['inter']} top-{r['top_k']}"
            # MXFP4 (gpt-oss's) or 4-bit packed integers (GPTQ/AWQ), where the row has one.
            kind = next((k for k in ("mxfp4", "int4") if f"triton_{k}_ms" in r), None)
            quantized = (
                f"{kind.upper()} {r[f'triton_{kind}_ms']} ({r[f'triton_{kind}_weight_gbs']})"
                if kind
                else "-"
            )
            report.append(
                f"| {shape} | {r['tokens']} | {r['triton_ms']} ({r['triton_weight_gbs']}) "
                f"| {r['torch_ms']} ({r['torch_weight_gbs']}) | {quantized} "
                f"| {r.get(f'{kind}_speedup_vs_bf16', '-')} |"
            )
    fp8 = read_lines(out / "fp8-linear.jsonl")
    if fp8:
        report += [
            "",
            "FP8 linear (us; weight GB/s):",
            "",
            "| out x in | rows | Triton FP8 GEMM | dequantize + cuBLAS | bf16 cuBLAS "
            "| GEMM vs bf16 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        report += [
            f"| {r['out_features']}x{r['in_features']} | {r['rows']} "
            f"| {r['fp8_gemm_us']} ({r['fp8_gemm_weight_gbs']}) "
            f"| {r['fp8_dequant_us']} ({r['fp8_dequant_weight_gbs']}) "
            f"| {r['bf16_us']} ({r['bf16_weight_gbs']}) | {r['gemm_vs_bf16']}x |"
            for r in fp8
        ]
    return targets, "\n".join(report) + "\n"


def exit_code(targets: list[Target]) -> int:
    outcomes = {t.outcome for t in targets}
    if MISSED in outcomes:
        return 1
    return 3 if NOT_MEASURED in outcomes else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_verdict",
        description="The kernels issue's GPU targets from a scripts/gpu-check.sh results folder.",
    )
    p.add_argument("out", type=Path, help="the folder gpu-check.sh wrote")
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a --smoke run's folder"
    )
    args = p.parse_args(argv)
    if not args.out.is_dir():
        print(f"{args.out} is not a folder of gpu-check results", file=sys.stderr)
        return 2
    targets, report = verdict(args.out, on_gpu=args.device == "cuda")
    (args.out / "verdict.md").write_text(report)
    print(report, end="")
    return exit_code(targets)


if __name__ == "__main__":
    raise SystemExit(main())
