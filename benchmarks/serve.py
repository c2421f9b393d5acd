"""Serving benchmark: streamed requests against OpenAI-compatible servers, like `vllm bench serve`.

Two modes:

- Load generator (default): stream `--num-requests` requests at each
  `--concurrency` against `--base-url` and print one JSON line per
  concurrency with TTFT, ITL, TPOT and end-to-end latency percentiles plus
  output tokens/s and requests/s over the run's wall time.

- `--compare`: measure, in one run on the same machine (these boxes are noisy,
  so only side-by-side ratios mean anything, DESIGN.md section 5),
    conveyor      `conveyor serve` started here (Redis + worker + API),
    inprocess     the same engine in this process, no queue, no HTTP: the
                  baseline that shows what the queue and the API cost,
    transformers  `transformers serve --continuous-batching` on the same
                  weights: the external reference,
  then print a summary line with the ratios. With both conveyor and
  inprocess at concurrency 1, a paired pass (benchmarks/paired_ttft.py) also
  sends each of `--num-requests` prompts to both, back to back, and reports
  the median per-pair TTFT difference: the queue's cost with the machine's
  minute-to-minute drift cancelled.

Every system gets the same prompts: deterministic text of about
`--prompt-len` tokens whose first block differs per request (so no prefix
cache serves one request from another) and which never repeats across
concurrency levels. Output length is pinned so every system does the same
work: `min_tokens = max_tokens = output_len` where the server accepts it;
transformers serve rejects `min_tokens` (and `ignore_eos`), so it gets a
`generation_config` with EOS disabled instead; a server that accepts neither
runs unpinned, and the line says so (`length_control: "none"`). Output tokens
are counted from the stream's `usage` when the server sends it, else from
content chunks.

    python -m benchmarks.serve --base-url http://127.0.0.1:8000/v1 --concurrency 1,16,64
    python -m benchmarks.serve --compare --concurrency 1,4 --num-requests 8 --output-len 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.args import int_list
from benchmarks.prompts import PARAGRAPH
from benchmarks.report import JsonLines, rounded
from benchmarks.serve_targets import (
    DEFAULT_STARTUP_TIMEOUT_S,
    ServerProcess,
    TargetError,
    start_conveyor,
    start_transformers,
)

TARGETS = ("conveyor", "inprocess", "transformers")
# How a request pins its output length, tried in this order ("auto").
LENGTH_CONTROLS = ("min_tokens", "hf_generation_config", "none")

# Prompt numbers for warm-up requests: far from any measured request's number.
_WARMUP_BASE = 10**6


# --- output ---------------------------------------------------------------------------


def _log(message: str) -> None:
    """Progress goes to stderr so stdout stays pure JSON lines."""
    print(f"[bench serve] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- prompts --------------------------------------------------------------------------


class _WordTokenizer:
    """Fallback when no tokenizer is at hand: about 0.75 words per token."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(math.ceil(len(text.split()) / 0.75)))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        words = math.floor(len(ids) * 0.75)
        return " ".join((PARAGRAPH * (words // 80 + 2)).split()[:words])


def make_prompt(tokenizer: Any, number: int, prompt_len: int) -> str:
    """About `prompt_len` tokens of text, distinct from its first words on.

    The number comes first so even the first KV block differs between prompts;
    the text is cut to `prompt_len` tokens and decoded back, so a server
    re-tokenizing it lands within a token or two of `prompt_len`.
    """
    header = f"Request {number}: "
    if isinstance(tokenizer, _WordTokenizer):
        return header + tokenizer.decode(range(max(prompt_len - 4, 1)))
    body_tokens = max(len(tokenizer.encode(PARAGRAPH, add_special_tokens=False)), 1)
    text = header + PARAGRAPH * (prompt_len // body_tokens + 2)
    ids = tokenizer.encode(text, add_special_tokens=False)[:prompt_len]
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def load_tokenizer(path: Path | None) -> Any:
    """The tokenizer prompts are measured with: `path`, else the bundled model's.

    Only the API-side tokenizer class is used (no torch), so the pure load
    generator stays light. Without either it falls back to counting words.
    """
    try:
        from engine.tokenizer import Tokenizer

        if path is None:
            from conveyor.settings import Settings
            from engine.loader import resolve_model

            path = resolve_model(None, Settings().data_dir).path
        return Tokenizer.load(path)
    except Exception as exc:
        _log(f"no tokenizer ({type(exc).__name__}: {exc}); prompt lengths are approximate")
        return _WordTokenizer()


# --- one streamed HTTP request ---------------------------------------------------------


@dataclass
class RequestResult:
    """What one request measured (seconds); `error` set means it failed."""

    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class RequestShape:
    """Everything about a request body except its prompt."""

    endpoint: str  # "completions", "chat" or "responses"
    model: str
    output_len: int
    length_control: str

    def body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "temperature": 0.0, "stream": True}
        if self.endpoint == "responses":  # usage comes with response.completed
            body.update(input=prompt, max_output_tokens=self.output_len)
        else:
            body.update(max_tokens=self.output_len, stream_options={"include_usage": True})
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        elif self.endpoint == "completions":
            body["prompt"] = prompt
        if self.length_control == "min_tokens":
            body["min_tokens"] = self.output_len
        elif self.length_control == "hf_generation_config":
            # transformers serve: a full GenerationConfig; eos_token_id -1 means
            # "no EOS" in its continuous batching, so exactly max_tokens come out.
            body["generation_config"] = json.dumps(
                {"do_sample": False, "max_new_tokens": self.output_len, "eos_token_id": -1}
            )
        return body

    @property
    def path(self) -> str:
        return {"chat": "/chat/completions", "responses": "/responses"}.get(
            self.endpoint, "/completions"
        )


def _chunk_text(chunk: dict[str, Any], endpoint: str) -> str:
    if endpoint == "responses":
        return chunk["delta"] if chunk.get("type") == "response.output_text.delta" else ""
    text = ""
    for choice in chunk.get("choices") or []:
        if endpoint == "chat":
            delta = choice.get("delta") or {}
            text += (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        else:
            text += choice.get("text") or ""
    return text


def _usage_counts(chunk: dict[str, Any]) -> tuple[int | None, int] | None:
    """(prompt, completion) tokens if this chunk reports usage: a chat or completions
    chunk's `usage`, or the Responses API's final event's `response.usage`."""
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        return usage.get("prompt_tokens"), int(usage["completion_tokens"])
    usage = (chunk.get("response") or {}).get("usage")
    if usage and usage.get("output_tokens") is not None:
        return usage.get("input_tokens"), int(usage["output_tokens"])
    return None


async def stream_request(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], endpoint: str
) -> RequestResult:
    """Send one streaming request and time its content chunks as they arrive.

    TTFT is the first chunk with text, ITL every gap between such chunks, e2e
    the end of the stream. Tokens come from the last `usage` seen, else one
    per content chunk.
    """
    result = RequestResult()
    chunks: list[float] = []
    usage_tokens: int | None = None
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                result.error = f"HTTP {response.status_code}: {detail}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(payload)
                if chunk.get("error") or chunk.get("type") == "error":
                    result.error = f"stream error: {json.dumps(chunk)[:300]}"
                    return result
                if _chunk_text(chunk, endpoint):
                    chunks.append(now)
                counts = _usage_counts(chunk)
                if counts is not None:
                    result.prompt_tokens, usage_tokens = counts
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    end = time.perf_counter()
    if not chunks:
        result.error = "no content in the stream"
        return result
    result.ttft = chunks[0] - start
    result.itls = [b - a for a, b in itertools.pairwise(chunks)]
    result.e2e = end - start
    result.output_tokens = usage_tokens if usage_tokens is not None else len(chunks)
    return result


async def _run_load_async(
    base_url: str,
    shape: RequestShape,
    prompts: list[str],
    concurrency: int,
    headers: dict[str, str],
    trust_env: bool,
) -> tuple[list[RequestResult], float]:
    """Keep `concurrency` requests in flight until every prompt has been sent."""
    url = base_url.rstrip("/") + shape.path
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(connect=30.0, read=600.0, write=30.0, pool=None)
    queue: deque[int] = deque(range(len(prompts)))
    results: list[RequestResult | None] = [None] * len(prompts)
    async with httpx.AsyncClient(
        limits=limits, timeout=timeout, headers=headers, trust_env=trust_env
    ) as client:

        async def worker() -> None:
            while queue:
                i = queue.popleft()
                results[i] = await stream_request(
                    client, url, shape.body(prompts[i]), shape.endpoint
                )

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
        wall = time.perf_counter() - start
    return [r for r in results if r is not None], wall


def run_load(
    base_url: str,
    shape: RequestShape,
    prompts: list[str],
    concurrency: int,
    headers: dict[str, str] | None = None,
    trust_env: bool = True,
) -> tuple[list[RequestResult], float]:
    """Synchronous entry to the load generator: per-request results and wall seconds."""
    return asyncio.run(
        _run_load_async(base_url, shape, prompts, concurrency, headers or {}, trust_env)
    )


def aggregate(
    target: str,
    concurrency: int,
    results: list[RequestResult],
    wall: float,
    output_len: int,
    **extra: Any,
) -> dict[str, Any]:
    """One JSON line: latency percentiles over successful requests, rates over wall time."""
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    tokens = sum(r.output_tokens for r in ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [gap for r in ok for gap in r.itls]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    tpot = [
        (r.e2e - r.ttft) / (r.output_tokens - 1)
        for r in ok
        if r.e2e is not None and r.ttft is not None and r.output_tokens > 1
    ]

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(1e3 * value, 2)

    prompt_tokens = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    line: dict[str, Any] = {
        "bench": "serve",
        "target": target,
        "concurrency": concurrency,
        "num_requests": len(results),
        "output_tokens": tokens,
        "ttft_ms_p50": ms(ttft, 50),
        "ttft_ms_p99": ms(ttft, 99),
        "itl_ms_p50": ms(itl, 50),
        "itl_ms_p99": ms(itl, 99),
        "tpot_ms_p50": ms(tpot, 50),
        "tpot_ms_p99": ms(tpot, 99),
        "e2e_ms_p50": ms(e2e, 50),
        "output_tok_s": rounded(tokens / wall, 2) if wall > 0 else None,
        "requests_s": rounded(len(ok) / wall, 3) if wall > 0 else None,
        "errors": len(errors),
        "e2e_ms_p99": ms(e2e, 99),
        "duration_s": rounded(wall),
        "output_len": output_len,
        "requests_not_output_len": sum(1 for r in ok if r.output_tokens != output_len),
        # What the server counted, to check every system saw prompts of the same size.
        "prompt_tokens_mean": (
            rounded(sum(prompt_tokens) / len(prompt_tokens), 1) if prompt_tokens else None
        ),
    }
    if errors:
        line["first_error"] = errors[0]
    line.update(extra)
    return line


# --- HTTP targets -----------------------------------------------------------------------


def first_model(base_url: str, headers: dict[str, str], trust_env: bool) -> str:
    """The first id GET /v1/models lists: what to send when --model is not given."""
    response = httpx.get(
        base_url.rstrip("/") + "/models", headers=headers, timeout=30.0, trust_env=trust_env
    )
    response.raise_for_status()
    data = response.json().get("data") or []
    if not data:
        raise TargetError(f"{base_url}/models lists no model")
    return str(data[0]["id"])


def choose_length_control(
    base_url: str,
    shape: RequestShape,
    prompt: str,
    wanted: str,
    headers: dict[str, str],
    trust_env: bool,
) -> str:
    """Warm the server up with one request, finding how it accepts a pinned length.

    Tries min_tokens, then transformers' generation_config, then nothing, and
    moves on only when the server rejects the body (HTTP 4xx); anything else
    (5xx, connection refused) is a real failure and raises. The warm-up also
    pays first-call costs (allocations, lazy init) outside the measurement.
    """
    candidates = LENGTH_CONTROLS if wanted == "auto" else (wanted,)
    rejections: list[str] = []
    for control in candidates:
        probe = dataclasses.replace(shape, length_control=control)
        results, _ = run_load(base_url, probe, [prompt], 1, headers, trust_env)
        error = results[0].error
        if error is None:
            if rejections:
                _log(f"length control {control!r} after rejections: {'; '.join(rejections)}")
            return control
        if not error.startswith("HTTP 4"):
            raise TargetError(f"warm-up request failed: {error}")
        rejections.append(f"{control}: {error}")
    raise TargetError(f"server rejected every request shape: {'; '.join(rejections)}")


def bench_http(
    target: str,
    base_url: str,
    args: argparse.Namespace,
    tokenizer: Any,
    emit: JsonLines,
    *,
    model: str | None = None,
    trust_env: bool = True,
    extra: dict[str, Any] | None = None,
) -> None:
    """Warm up once, then one run per concurrency against an OpenAI-compatible server."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = model or args.model or first_model(base_url, headers, trust_env)
    shape = RequestShape(args.endpoint, model, args.output_len, "none")
    warm_prompt = make_prompt(tokenizer, _WARMUP_BASE, args.prompt_len)
    control = choose_length_control(
        base_url, shape, warm_prompt, args.length_control, headers, trust_env
    )
    shape = dataclasses.replace(shape, length_control=control)
    for level, concurrency in enumerate(args.concurrency):
        prompts = prompt_texts(tokenizer, args, level)
        _log(f"{target}: {len(prompts)} requests at concurrency {concurrency}")
        results, wall = run_load(base_url, shape, prompts, concurrency, headers, trust_env)
        emit(
            aggregate(
                target,
                concurrency,
                results,
                wall,
                args.output_len,
                endpoint=args.endpoint,
                prompt_len=args.prompt_len,
                length_control=control,
                model=model,
                **(extra or {}),
            )
        )


def prompt_texts(tokenizer: Any, args: argparse.Namespace, level: int) -> list[str]:
    """The prompts of one concurrency level: numbered so no level reuses another's."""
    first = level * args.num_requests
    return [make_prompt(tokenizer, first + i, args.prompt_len) for i in range(args.num_requests)]


@contextlib.contextmanager
def running(server: ServerProcess, timeout_s: float) -> Iterator[ServerProcess]:
    """A started server that is healthy inside the block and stopped after it, always."""
    try:
        seconds = server.wait_ready(timeout_s)
        _log(f"{server.name} healthy after {seconds:.1f} s at {server.base_url}")
        yield server
    finally:
        code = server.stop()
        kept = "" if server.stopped_cleanly else f"; log kept at {server.log_path}"
        _log(f"{server.name} stopped (exit code {code}){kept}")


# --- in-process engine ------------------------------------------------------------------


@dataclass
class _Track:
    arrival: float
    stamps: list[float] = field(default_factory=list)
    tokens: int = 0


def run_inprocess(
    llm: Any, prompt_ids: list[list[int]], concurrency: int, output_len: int
) -> tuple[list[RequestResult], float]:
    """Drive the engine directly with `concurrency` requests in flight, like the load generator.

    A request is added as soon as another finishes (between steps, which is the
    earliest an engine can take it). Each step's return is a timestamp for all
    the requests that got tokens in it: TTFT is the first such stamp after the
    request was added, ITL the gaps between stamps.
    """
    from engine.sampling_params import SamplingParams

    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len)
    pending: deque[int] = deque(range(len(prompt_ids)))
    tracks: dict[str, _Track] = {}
    results: list[RequestResult | None] = [None] * len(prompt_ids)
    index: dict[str, int] = {}
    tag = f"bench-{time.monotonic_ns()}"

    def admit() -> None:
        while pending and len(tracks) < concurrency:
            i = pending.popleft()
            request_id = f"{tag}-{i}"
            index[request_id] = i
            tracks[request_id] = _Track(time.perf_counter())
            engine.add_request(request_id, prompt_ids[i], params)

    start = time.perf_counter()
    admit()
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            track = tracks.get(out.request_id)
            if track is None:
                continue
            produced = sum(len(choice.token_ids) for choice in out.outputs)
            if produced:
                track.stamps.append(now)
                track.tokens += produced
            if out.finished:
                del tracks[out.request_id]
                result = _track_result(track, now)
                result.prompt_tokens = len(prompt_ids[index[out.request_id]])
                results[index[out.request_id]] = result
        admit()
    wall = time.perf_counter() - start
    return [r or RequestResult(error="never finished") for r in results], wall


def _track_result(track: _Track, finished: float) -> RequestResult:
    if not track.stamps:
        return RequestResult(error="finished without tokens")
    return RequestResult(
        ttft=track.stamps[0] - track.arrival,
        itls=[b - a for a, b in itertools.pairwise(track.stamps)],
        e2e=finished - track.arrival,
        output_tokens=track.tokens,
    )


def inprocess_llm(device: str, dtype: str) -> Any:
    """The engine `conveyor serve`'s worker runs, built from the same settings."""
    from conveyor.settings import Settings
    from engine.llm import LLM

    config = Settings(device=device, dtype=dtype).engine_config()
    knobs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    knobs.pop("model")
    return LLM(None, **knobs)


def engine_prompt_ids(llm: Any, endpoint: str) -> Callable[[str], list[int]]:
    """Text -> token ids exactly as the API would build them for `endpoint`."""
    engine_tokenizer = llm.tokenizer

    def ids(text: str) -> list[int]:
        if endpoint in ("chat", "responses"):  # a response's string input is one user turn
            return list(engine_tokenizer.apply_chat_template([{"role": "user", "content": text}]))
        return list(engine_tokenizer.encode(text))

    return ids


def bench_inprocess(
    args: argparse.Namespace, tokenizer: Any, emit: JsonLines, device: str, dtype: str
) -> None:
    """The engine `conveyor serve`'s worker runs, built from the same settings, minus the queue."""
    import torch

    llm = inprocess_llm(device, dtype)
    ids = engine_prompt_ids(llm, args.endpoint)
    warm = ids(make_prompt(tokenizer, _WARMUP_BASE, args.prompt_len))
    run_inprocess(llm, [warm], 1, args.output_len)
    for level, concurrency in enumerate(args.concurrency):
        prompts = [ids(text) for text in prompt_texts(tokenizer, args, level)]
        _log(f"inprocess: {len(prompts)} requests at concurrency {concurrency}")
        results, wall = run_inprocess(llm, prompts, concurrency, args.output_len)
        emit(
            aggregate(
                "inprocess",
                concurrency,
                results,
                wall,
                args.output_len,
                endpoint=args.endpoint,
                prompt_len=args.prompt_len,
                length_control="min_tokens",
                threads=torch.get_num_threads(),
                device=device,
                dtype=dtype,
            )
        )
    del llm
    gc.collect()


# --- compare ----------------------------------------------------------------------------


def _kv_blocks_like_conveyor(model_dir: Path, dtype: str, block_size: int) -> int:
    """transformers' KV block count for the same CPU KV budget conveyor's worker gets.

    Left alone, transformers sizes its CPU cache from free memory (gigabytes
    here); matching conveyor's `kv_cache_memory` keeps the comparison about
    serving, not about who grabbed more RAM.
    """
    from conveyor.settings import Settings

    config = json.loads((model_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    itemsize = 4 if dtype == "float32" else 2
    per_token = config["num_hidden_layers"] * 2 * kv_heads * head_dim * itemsize
    return max(Settings().kv_cache_memory // (per_token * block_size), 1)


def bench_compare(args: argparse.Namespace, emit: JsonLines) -> None:
    """Each selected target in turn, alone on the machine, then the summary ratios."""
    import torch

    from conveyor.settings import Settings
    from engine.config import resolve_dtype
    from engine.loader import resolve_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or str(resolve_dtype(None, torch.device(device))).removeprefix("torch.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model(None, Settings().data_dir).path
    tokenizer = load_tokenizer(args.tokenizer or model_dir)
    common = {"device": device, "dtype": dtype, "threads": args.threads}
    for target in args.targets:
        try:
            if target == "conveyor":
                server = start_conveyor(device=device, dtype=dtype, threads=args.threads)
                with running(server, args.startup_timeout):
                    bench_http(
                        "conveyor",
                        server.base_url,
                        args,
                        tokenizer,
                        emit,
                        trust_env=False,
                        extra=common,
                    )
                    if "inprocess" in args.targets and 1 in args.concurrency:
                        emit(paired_ttft(server.base_url, args, tokenizer, device, dtype))
            elif target == "inprocess":
                bench_inprocess(args, tokenizer, emit, device, dtype)
            else:
                kv_blocks = (
                    _kv_blocks_like_conveyor(model_dir, dtype, 16) if device == "cpu" else None
                )
                server = start_transformers(
                    model_dir, device=device, dtype=dtype, threads=args.threads, kv_blocks=kv_blocks
                )
                with running(server, args.startup_timeout):
                    extra = {**common, "kv_blocks": kv_blocks}
                    bench_http(
                        "transformers-serve",
                        server.base_url,
                        args,
                        tokenizer,
                        emit,
                        trust_env=False,
                        extra=extra,
                    )
        except Exception as exc:  # one broken system must not hide the others' numbers
            name = "transformers-serve" if target == "transformers" else target
            emit({"bench": "serve", "target": name, "error": f"{type(exc).__name__}: {exc}"})
    emit(summarize(emit.lines, args.concurrency))


# Output tokens per request in the paired TTFT pass: only the first one is timed.
PAIRED_OUTPUT_LEN = 8


def paired_ttft(
    base_url: str, args: argparse.Namespace, tokenizer: Any, device: str, dtype: str
) -> dict[str, Any]:
    """Queue-added TTFT at concurrency 1, serve and in-process engine alternating per prompt."""
    from benchmarks.paired_ttft import measure_paired_ttft

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or first_model(base_url, headers, trust_env=False)
    shape = RequestShape(args.endpoint, model, PAIRED_OUTPUT_LEN, "min_tokens")
    llm = inprocess_llm(device, dtype)
    ids = engine_prompt_ids(llm, args.endpoint)
    run_inprocess(llm, [ids(make_prompt(tokenizer, _WARMUP_BASE, args.prompt_len))], 1, 2)
    # Numbered after every concurrency level's prompts: no prefix-cache hit on the server.
    prompts = prompt_texts(tokenizer, args, len(args.concurrency))
    _log(f"paired TTFT: {len(prompts)} prompts, conveyor serve and in-process alternating")
    try:
        return measure_paired_ttft(base_url, shape, headers, llm, ids, prompts)
    finally:
        del llm
        gc.collect()


def summarize(lines: list[dict[str, Any]], concurrencies: list[int]) -> dict[str, Any]:
    """Ratios between targets measured minutes apart in this run (None where one is missing)."""

    def row(target: str, concurrency: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in lines
                if r.get("target") == target
                and r.get("concurrency") == concurrency
                and "error" not in r
            ),
            None,
        )

    def ratio(a: str, b: str, key: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for c in concurrencies:
            ra, rb = row(a, c), row(b, c)
            if ra is None or rb is None or ra.get(key) is None or not rb.get(key):
                out[str(c)] = None
            else:
                out[str(c)] = rounded(ra[key] / rb[key])
        return out

    def ttft_added(c: int) -> float | None:
        ra, rb = row("conveyor", c), row("inprocess", c)
        if not ra or not rb or ra["ttft_ms_p50"] is None or rb["ttft_ms_p50"] is None:
            return None
        return rounded(ra["ttft_ms_p50"] - rb["ttft_ms_p50"], 2)

    return {
        "bench": "serve",
        "target": "summary",
        "concurrency": concurrencies,
        "conveyor_vs_inprocess_output_tok_s": ratio("conveyor", "inprocess", "output_tok_s"),
        "conveyor_vs_transformers_output_tok_s": ratio(
            "conveyor", "transformers-serve", "output_tok_s"
        ),
        "queue_added_ttft_ms_p50_c1": ttft_added(1),
        "queue_added_ttft_ms_p50_c1_paired": next(
            (r.get("queue_added_ttft_ms_p50") for r in lines if r.get("target") == "paired-ttft"),
            None,
        ),
        "queue_added_ttft_ms_p50": {str(c): ttft_added(c) for c in concurrencies},
        "conveyor_vs_inprocess_tpot_p50": ratio("conveyor", "inprocess", "tpot_ms_p50"),
    }


# --- CLI --------------------------------------------------------------------------------


def _targets(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(values) - set(TARGETS))
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"targets are a subset of {','.join(TARGETS)}")
    return [t for t in TARGETS if t in values]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="conveyor bench serve",
        description="Stream requests at OpenAI-compatible servers; --compare measures "
        "conveyor serve, the in-process engine and transformers serve side by side.",
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="server's /v1 URL")
    p.add_argument("--model", default=None, help="model to request (default: first of /models)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key")
    p.add_argument(
        "--endpoint", choices=["completions", "chat", "responses"], default="completions"
    )
    p.add_argument(
        "--concurrency", type=int_list, default=[1, 16, 64], help="comma-separated in-flight caps"
    )
    p.add_argument("--num-requests", type=int, default=64, help="requests per concurrency")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (approximately)")
    p.add_argument("--output-len", type=int, default=64, help="output tokens per request")
    p.add_argument(
        "--length-control",
        choices=["auto", *LENGTH_CONTROLS],
        default="auto",
        help="how requests pin their output length (auto: the first the server accepts)",
    )
    p.add_argument("--tokenizer", type=Path, default=None, help="HF folder to size prompts")
    p.add_argument("--compare", action="store_true", help="start and measure the targets here")
    p.add_argument(
        "--targets",
        type=_targets,
        default=list(TARGETS),
        help=f"with --compare: a subset of {','.join(TARGETS)}",
    )
    p.add_argument("--device", default=None, help="--compare: cpu or cuda (default: cuda if any)")
    p.add_argument("--dtype", default=None, help="--compare: default float32 on CPU, else bf16")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="--compare: torch/OpenMP threads for every system (default: each one's own)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT_S,
        help="seconds a started server has to become healthy",
    )
    p.add_argument("--json-out", type=Path, default=None, help="append the JSON lines here")
    args = p.parse_args(argv)
    if min(args.num_requests, args.prompt_len, args.output_len) < 1:
        p.error("--num-requests, --prompt-len and --output-len must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """`conveyor bench serve`: JSON lines on stdout, progress on stderr; 1 if anything failed."""
    args = _parse_args(argv)
    # One INFO line per request from httpx would flood the output and cost the client time.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    emit = JsonLines(args.json_out)
    if args.compare:
        bench_compare(args, emit)
    else:
        tokenizer = load_tokenizer(args.tokenizer)
        try:
            bench_http(args.base_url, args.base_url, args, tokenizer, emit)
        except (TargetError, httpx.HTTPError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            emit({"bench": "serve", "target": args.base_url, "error": error})
    return 1 if any(r.get("error") or r.get("errors") for r in emit.lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
