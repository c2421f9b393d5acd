"""Batch interference: what a running batch costs interactive users of the same server.

One run measures streamed interactive chat requests twice, side by side (these
machines are noisy, so only the ratio means much):

  idle          the server has nothing else to do,
  during_batch  a large batch (`--batch-lines` chat lines, `ignore_eos` so every
                line does the same work) runs on the same server through the
                Files + Batches API; its lines go to the model's batch lane,
                which workers read only when the interactive stream is empty.

The second phase starts once the batch is `in_progress` and has finished
`--min-batch-lines` lines, and must end before the batch does: if the batch is
no longer `in_progress` (or has no lines left) when the last interactive
request ends, the phase is marked invalid and says why. The batch is then
cancelled and the benchmark waits for `cancelled`.

Output: one JSON line per phase (TTFT, ITL, TPOT and end-to-end latency
percentiles of the interactive requests, plus how many batch lines finished
during the phase and at what rate), then a summary line with the ratios
during/idle. Progress goes to stderr.

    conveyor bench batch                      # starts its own `conveyor serve`
    conveyor bench batch --url http://127.0.0.1:8000/v1 --batch-lines 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.prompts import PARAGRAPH
from benchmarks.report import JsonLines, rounded
from benchmarks.serve import (
    RequestResult,
    RequestShape,
    aggregate,
    choose_length_control,
    first_model,
    run_load,
)
from benchmarks.serve_targets import (
    DEFAULT_STARTUP_TIMEOUT_S,
    ServerProcess,
    TargetError,
    start_conveyor,
)
from conveyor.cli import positive_int

BENCH = "batch"
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Prompt numbers: each group far from the others so no two requests share a prompt.
_WARMUP_BASE = 10**6
_BATCH_BASE = 2 * 10**6
_POLL_S = 0.2


def _log(message: str) -> None:
    """Progress goes to stderr so stdout stays pure JSON lines."""
    print(f"[bench batch] {message}", file=sys.stderr, flush=True)


# --- requests ----------------------------------------------------------------------------


def short_prompt(number: int, words: int) -> str:
    """A numbered prompt of `words` words of prose (about 1.3 tokens a word)."""
    text = (PARAGRAPH * (words // 80 + 1)).split()[:words]
    return f"Request {number}: " + " ".join(text)


def batch_jsonl(model: str, lines: int, max_tokens: int, prompt_words: int) -> bytes:
    """The batch input file: `lines` chat requests that each generate exactly `max_tokens`."""
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": ENDPOINT,
            "body": {
                "model": model,
                "messages": [
                    {"role": "user", "content": short_prompt(_BATCH_BASE + i, prompt_words)}
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(lines)
    ]
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


@dataclass(frozen=True)
class BatchProgress:
    """A batch's status and request counts at one moment."""

    status: str
    completed: int
    failed: int
    total: int

    @classmethod
    def from_json(cls, batch: dict[str, Any]) -> BatchProgress:
        counts = batch.get("request_counts") or {}
        return cls(
            status=str(batch.get("status")),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            total=int(counts.get("total") or 0),
        )

    @property
    def processed(self) -> int:
        return self.completed + self.failed


def phase_invalid_reason(end: BatchProgress) -> str | None:
    """Why a during_batch phase did not have the batch running to its end, or None."""
    if end.status != "in_progress":
        return f"the batch was {end.status!r}, not in_progress, when the phase ended"
    if end.total and end.processed >= end.total:
        return f"the batch had finished all {end.total} lines before the phase ended"
    return None


# --- lines -------------------------------------------------------------------------------


_LATENCY_KEYS = (
    "ttft_ms_p50",
    "ttft_ms_p99",
    "itl_ms_p50",
    "itl_ms_p99",
    "tpot_ms_p50",
    "e2e_ms_p50",
    "e2e_ms_p99",
    "output_tokens",
    "output_tok_s",
    "errors",
)


def phase_line(
    phase: str,
    results: list[RequestResult],
    wall: float,
    *,
    concurrency: int,
    max_tokens: int,
    start: BatchProgress | None = None,
    end: BatchProgress | None = None,
) -> dict[str, Any]:
    """One phase's JSON line: interactive latency, and batch progress between start and end."""
    stats = aggregate(BENCH, concurrency, results, wall, max_tokens)
    line: dict[str, Any] = {"bench": BENCH, "phase": phase, "requests": len(results)}
    line.update({key: stats[key] for key in _LATENCY_KEYS})
    line["requests_not_max_tokens"] = stats["requests_not_output_len"]
    if "first_error" in stats:
        line["first_error"] = stats["first_error"]
    completed = failed = 0
    if start is not None and end is not None:
        completed = end.completed - start.completed
        failed = end.failed - start.failed
    line["batch_lines_completed_during_phase"] = completed
    line["batch_lines_failed_during_phase"] = failed
    line["batch_lines_per_s"] = rounded(completed / wall, 2) if wall > 0 else None
    line["duration_s"] = rounded(wall)
    line["concurrency"] = concurrency
    line["max_tokens"] = max_tokens
    reason = None
    if start is not None and end is not None:
        line["batch_lines_done_at_start"] = start.processed
        line["batch_lines_left_at_end"] = max(end.total - end.processed, 0)
        line["batch_status_at_end"] = end.status
        reason = phase_invalid_reason(end)
    line["valid"] = reason is None
    if reason is not None:
        line["invalid_reason"] = reason
    return line


def _ratio(during: Any, idle: Any) -> float | None:
    if during is None or not idle:
        return None
    return rounded(during / idle)


def summarize(
    idle: dict[str, Any],
    during: dict[str, Any],
    other_problems: Sequence[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """The summary line: during_batch / idle ratios and whether they are trustworthy."""
    problems = []
    if not during.get("valid", False):
        problems.append(f"during_batch invalid: {during.get('invalid_reason', 'unknown')}")
    for line in (idle, during):
        if line.get("errors"):
            problems.append(f"{line['phase']}: {line['errors']} failed requests")
    problems.extend(other_problems)
    summary: dict[str, Any] = {
        "bench": BENCH,
        "phase": "summary",
        "ttft_ratio_p50": _ratio(during.get("ttft_ms_p50"), idle.get("ttft_ms_p50")),
        "ttft_ratio_p99": _ratio(during.get("ttft_ms_p99"), idle.get("ttft_ms_p99")),
        "itl_ratio_p50": _ratio(during.get("itl_ms_p50"), idle.get("itl_ms_p50")),
        "tpot_ratio_p50": _ratio(during.get("tpot_ms_p50"), idle.get("tpot_ms_p50")),
        "e2e_ratio_p50": _ratio(during.get("e2e_ms_p50"), idle.get("e2e_ms_p50")),
        "ttft_added_ms_p50": (
            None
            if during.get("ttft_ms_p50") is None or idle.get("ttft_ms_p50") is None
            else round(during["ttft_ms_p50"] - idle["ttft_ms_p50"], 2)
        ),
        "valid": not problems,
    }
    if problems:
        summary["problems"] = problems
    summary.update(extra)
    return summary


# --- the batch over HTTP -------------------------------------------------------------------


class BatchClient:
    """The Files + Batches calls this benchmark makes, over plain httpx."""

    def __init__(self, base_url: str, headers: dict[str, str], trust_env: bool) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, trust_env=trust_env, timeout=60.0
        )

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise TargetError(
                f"{response.request.method} {response.request.url.path}: "
                f"HTTP {response.status_code}: {response.text[:300]}"
            )
        return dict(response.json())

    def submit(self, content: bytes) -> str:
        uploaded = self._json(
            self.http.post(
                "/files",
                data={"purpose": "batch"},
                files={"file": ("batch_interference.jsonl", content, "application/jsonl")},
            )
        )
        batch = self._json(
            self.http.post(
                "/batches",
                json={
                    "input_file_id": uploaded["id"],
                    "endpoint": ENDPOINT,
                    "completion_window": "24h",
                    "metadata": {"purpose": "conveyor bench batch"},
                },
            )
        )
        return str(batch["id"])

    def progress(self, batch_id: str) -> tuple[BatchProgress, dict[str, Any]]:
        batch = self._json(self.http.get(f"/batches/{batch_id}"))
        return BatchProgress.from_json(batch), batch

    def cancel(self, batch_id: str) -> None:
        self._json(self.http.post(f"/batches/{batch_id}/cancel"))

    def wait_running(self, batch_id: str, min_lines: int, timeout_s: float) -> BatchProgress:
        """Until the batch is in_progress with `min_lines` lines done; TargetError otherwise."""
        deadline = time.monotonic() + timeout_s
        progress, batch = self.progress(batch_id)
        while time.monotonic() < deadline:
            if progress.status == "in_progress" and progress.processed >= min_lines:
                return progress
            if progress.status in TERMINAL or progress.status in ("finalizing", "cancelling"):
                errors = json.dumps(batch.get("errors"))[:300]
                raise TargetError(f"batch {batch_id} is {progress.status} (errors: {errors})")
            time.sleep(_POLL_S)
            progress, batch = self.progress(batch_id)
        raise TargetError(
            f"batch {batch_id} not in_progress with {min_lines} lines done after "
            f"{timeout_s:.0f} s: {progress}"
        )

    def cancel_and_wait(self, batch_id: str, timeout_s: float) -> tuple[BatchProgress, float]:
        """Cancel unless already over; wait for a terminal status. Returns it and the seconds."""
        start = time.monotonic()
        progress, _ = self.progress(batch_id)
        if progress.status not in TERMINAL:
            self.cancel(batch_id)
        deadline = start + timeout_s
        while progress.status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            progress, _ = self.progress(batch_id)
        return progress, time.monotonic() - start


# --- the run -------------------------------------------------------------------------------


@contextlib.contextmanager
def _server(args: argparse.Namespace, facts: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """(base URL, trust_env): `--url`, or a `conveyor serve` started here and stopped after."""
    if args.url:
        facts["target"] = args.url
        yield args.url, True
        return
    import torch

    from conveyor.settings import Settings
    from engine.config import resolve_dtype
    from engine.loader import BUNDLED_MODEL_NAME, resolve_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or str(resolve_dtype(None, torch.device(device))).removeprefix("torch.")
    model_dir = resolve_model(None, Settings().data_dir).path
    # A scratch data dir: its own SQLite database and batch files, nothing left behind.
    scratch = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    extra = [str(model_dir), "--served-model-name", BUNDLED_MODEL_NAME, "--data-dir", str(scratch)]
    server: ServerProcess = start_conveyor(
        device=device, dtype=dtype, threads=args.threads, extra_args=extra
    )
    server.scratch.append(scratch)
    facts.update(target="conveyor serve (started here)", device=device, dtype=dtype)
    try:
        seconds = server.wait_ready(args.startup_timeout)
        _log(f"conveyor serve healthy after {seconds:.1f} s at {server.base_url}")
        yield server.base_url, False
    finally:
        code = server.stop()
        kept = "" if server.stopped_cleanly else f"; log kept at {server.log_path}"
        _log(f"conveyor serve stopped (exit code {code}){kept}")


def _measure(
    args: argparse.Namespace, base_url: str, trust_env: bool, emit: JsonLines, facts: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or first_model(base_url, headers, trust_env)
    facts["model"] = model
    shape = RequestShape("chat", model, args.max_tokens, "none")
    control = choose_length_control(
        base_url,
        shape,
        short_prompt(_WARMUP_BASE, args.prompt_words),
        "auto",
        headers,
        trust_env,
    )
    shape = RequestShape("chat", model, args.max_tokens, control)
    facts["length_control"] = control
    n = args.num_requests

    def prompts(first: int) -> list[str]:
        return [short_prompt(first + i, args.prompt_words) for i in range(n)]

    common = {"concurrency": args.concurrency, "max_tokens": args.max_tokens}
    _log(f"idle: {n} requests at concurrency {args.concurrency}")
    results, wall = run_load(base_url, shape, prompts(0), args.concurrency, headers, trust_env)
    idle = phase_line("idle", results, wall, **common)
    emit(idle)

    client = BatchClient(base_url, headers, trust_env)
    batch_id: str | None = None
    try:
        content = batch_jsonl(model, args.batch_lines, args.batch_max_tokens, args.prompt_words)
        batch_id = client.submit(content)
        facts["batch_id"] = batch_id
        _log(f"batch {batch_id}: {args.batch_lines} lines submitted; waiting for it to run")
        waited = time.monotonic()
        client.wait_running(batch_id, args.min_batch_lines, args.batch_start_timeout)
        facts["batch_start_s"] = rounded(time.monotonic() - waited, 2)
        start, _ = client.progress(batch_id)
        _log(f"during_batch: {n} requests, batch at {start.processed}/{start.total} lines")
        results, wall = run_load(base_url, shape, prompts(n), args.concurrency, headers, trust_env)
        end, _ = client.progress(batch_id)
        during = phase_line("during_batch", results, wall, start=start, end=end, **common)
        if not during["valid"]:
            _log(f"during_batch is INVALID: {during['invalid_reason']}")
        emit(during)
    finally:
        if batch_id is not None:
            _log(f"cancelling batch {batch_id}")
            final, seconds = client.cancel_and_wait(batch_id, args.cancel_timeout)
            facts.update(
                batch_status_after_cancel=final.status,
                batch_cancel_s=rounded(seconds, 2),
                batch_lines_completed_total=final.completed,
                batch_lines_failed_total=final.failed,
            )
            _log(f"batch {batch_id} is {final.status} after {seconds:.1f} s")
        client.close()
    problems = []
    if facts.get("batch_status_after_cancel") != "cancelled":
        problems.append(f"batch ended {facts.get('batch_status_after_cancel')!r}, not cancelled")
    facts["loadavg_end"] = _loadavg()
    emit(summarize(idle, during, problems, **facts))


# --- CLI ---------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench batch",
        description="Interactive streaming latency on an idle server and while a large "
        "batch runs on it, side by side in one run.",
    )
    p.add_argument(
        "--url", default=None, help="a running server's /v1 URL (default: start conveyor serve)"
    )
    p.add_argument("--model", default=None, help="model to request (default: first of /models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key")
    p.add_argument(
        "--num-requests", type=positive_int, default=20, help="interactive requests per phase"
    )
    p.add_argument(
        "--concurrency", type=positive_int, default=1, help="interactive requests in flight"
    )
    p.add_argument(
        "--max-tokens", type=positive_int, default=32, help="tokens per interactive request"
    )
    p.add_argument(
        "--prompt-words", type=positive_int, default=24, help="words per prompt (short prose)"
    )
    p.add_argument("--batch-lines", type=positive_int, default=500, help="lines in the batch")
    p.add_argument(
        "--batch-max-tokens", type=positive_int, default=32, help="tokens per batch line"
    )
    p.add_argument(
        "--min-batch-lines",
        type=int,
        default=5,
        help="batch lines done before the during_batch phase starts",
    )
    p.add_argument(
        "--batch-start-timeout",
        type=float,
        default=300.0,
        help="seconds the batch has to start running",
    )
    p.add_argument(
        "--cancel-timeout", type=float, default=60.0, help="seconds to wait for `cancelled`"
    )
    p.add_argument(
        "--device", default=None, help="started server: cpu or cuda (default: cuda if any)"
    )
    p.add_argument(
        "--dtype", default=None, help="started server: default float32 on CPU, else bf16"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="started server: torch/OpenMP threads"
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT_S,
        help="seconds a started server has to become healthy",
    )
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if args.min_batch_lines < 0:
        p.error("--min-batch-lines must be at least 0")
    if args.min_batch_lines >= args.batch_lines:
        p.error("--min-batch-lines must be below --batch-lines (the batch must still be running)")
    if args.url and (args.device or args.dtype or args.threads):
        p.error("--device, --dtype and --threads apply to a server started here, not --url")
    return args


def main(argv: list[str] | None = None) -> int:
    """`conveyor bench batch`: JSON lines on stdout, progress on stderr; 1 unless all is valid."""
    args = _parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    emit = JsonLines(args.json_out)
    facts: dict[str, Any] = {
        "batch_lines": args.batch_lines,
        "batch_max_tokens": args.batch_max_tokens,
        "loadavg_start": _loadavg(),
    }
    try:
        with _server(args, facts) as (base_url, trust_env):
            _measure(args, base_url, trust_env, emit, facts)
    except (TargetError, httpx.HTTPError) as exc:
        emit({"bench": BENCH, "phase": "error", "error": f"{type(exc).__name__}: {exc}", **facts})
        return 1
    return 0 if emit.lines[-1].get("valid") else 1


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: how busy the (shared) machine was."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
