"""Redis names and the few helpers both sides of the queue share.

All keys live under one prefix so several deployments can share a Redis
(`--redis-prefix`). API processes and workers only ever build names here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORKER_GROUP = "workers"
# The single field of a request stream entry; its value is GenerateRequest.encode().
REQUEST_FIELD = "data"
# What workers publish under `tokenizer(model)` so API processes need no model files:
# these files when the model has them, plus `config.json`, `generation_config.json` (the
# served sampling defaults) and a digest of it all.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    # A vision-language release's template, where its tokenizer has none (Qwen-VL's).
    "chat_template.json",
)
TOKENIZER_DIGEST_FIELD = "digest"

# Request lanes, highest priority first. Each lane is its own stream, so queued batch
# lines never sit in front of an interactive request: workers read the lanes in this
# order, and capacity (`--max-queued-requests`) is counted per lane.
INTERACTIVE_LANE = "interactive"
BATCH_LANE = "batch"
LANES = (INTERACTIVE_LANE, BATCH_LANE)


# How long a model, alias or adapter name is remembered after a worker last served it
# (each heartbeat renews it): long enough for any worker restart (a 503 meanwhile, not a
# 404), short enough that a retired or renamed model stops holding /health at 503.
KNOWN_NAME_TTL_SECONDS = 3600


def glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN / KEYS pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class BusNames:
    """Every Redis key, stream and channel conveyor uses."""

    prefix: str = "conveyor"

    def requests(self, model: str, lane: str = INTERACTIVE_LANE) -> str:
        """Stream of GenerateRequest messages for one served model and lane.

        The interactive stream keeps its historical name. The batch stream's name
        puts the interactive name in a Redis Cluster hash tag, so both lanes of a
        model share a slot and one XREADGROUP can block on the two together.
        """
        base = f"{self.prefix}:req:{model}"
        if lane == INTERACTIVE_LANE:
            return base
        if lane == BATCH_LANE:
            return f"{{{base}}}:{BATCH_LANE}"
        raise ValueError(f"unknown request lane {lane!r} (lanes: {', '.join(LANES)})")

    def dead_letters(self, model: str) -> str:
        """Requests that failed `max_deliveries` times, kept for operators to inspect."""
        return f"{self.prefix}:dead:{model}"

    def reply(self, api_instance: str) -> str:
        """Pub/sub channel one API process subscribes to, once, for all its requests."""
        return f"{self.prefix}:reply:{api_instance}"

    def result(self, request_id: str) -> str:
        """The final result, stored with a TTL for non-streaming and lost-message recovery."""
        return f"{self.prefix}:result:{request_id}"

    def response_events(self, response_id: str) -> str:
        """A streamed background response's events (a Redis stream, with a TTL), which
        any API process replays to a client (api/response_event_log.py)."""
        return f"{self.prefix}:response_events:{response_id}"

    def response_cancel(self, response_id: str) -> str:
        """Set (with a TTL) when a background response is cancelled: the API process
        running it, whichever it is, polls this and aborts the generation."""
        return f"{self.prefix}:response_cancel:{response_id}"

    @property
    def abort(self) -> str:
        """Pub/sub channel of request ids whose client went away."""
        return f"{self.prefix}:abort"

    @property
    def interrupt(self) -> str:
        """Pub/sub channel of `POST /abort_requests` calls (conveyor/interrupt_request.py)."""
        return f"{self.prefix}:interrupt"

    @property
    def interrupted(self) -> str:
        """Sorted set of recent `POST /abort_requests` calls, scored by time, that a worker
        reads when it subscribes (conveyor/interrupt_request.py)."""
        return f"{self.prefix}:interrupted"

    def worker(self, model: str, instance: str) -> str:
        """Heartbeat key (with TTL) announcing a live worker and its capacity."""
        return f"{self.prefix}:worker:{model}:{instance}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def model_workers_pattern(self, model: str) -> str:
        """The heartbeat keys of `model`'s workers (a SCAN pattern; a model name whose
        prefix is another's matches the other's too: check the beat's `model`)."""
        return f"{glob_escape(self.worker(model, ''))}*"

    def worker_metrics(self, instance: str) -> str:
        """A worker's latest metrics snapshot, read by any API replica's /metrics."""
        return f"{self.prefix}:metrics:{instance}"

    @property
    def worker_metrics_pattern(self) -> str:
        return f"{self.prefix}:metrics:*"

    def tokenizer(self, model: str) -> str:
        """Hash of the model's tokenizer files, published by its workers for API processes."""
        return f"{self.prefix}:tokenizer:{model}"

    def known_model(self, model: str) -> str:
        """Set once a worker has served `model`: tells 'unknown' (404) from 'no worker' (503)."""
        return f"{self.prefix}:model:{model}"

    def known_alias(self, name: str) -> str:
        """Set once a worker has served its model under the other name `name` (vLLM's
        --served-model-name A B): 404 vs 503 again, apart from models as adapters are."""
        return f"{self.prefix}:alias:{name}"

    def known_adapter(self, name: str) -> str:
        """Set once a worker has served LoRA adapter `name` (404 vs 503, as for models). Kept
        apart from `known_model`: /health waits for models, never for adapters."""
        return f"{self.prefix}:adapter:{name}"

    def runtime_loras(self, model: str) -> str:
        """Hash of the LoRA adapters loaded into `model` at run time (name -> path): what
        its workers, new ones included, should serve on top of their --lora-modules."""
        return f"{self.prefix}:loras:{model}"

    def lora_errors(self, model: str) -> str:
        """Hash of runtime adapters a worker of `model` could not load (name -> JSON)."""
        return f"{self.prefix}:lora-errors:{model}"

    def sleep(self, model: str) -> str:
        """The sleep-mode state asked of `model`'s engines (conveyor/sleep_request.py)."""
        return f"{self.prefix}:sleep:{model}"

    def pause(self, model: str) -> str:
        """Whether `model`'s engines are asked to pause, and how (conveyor/pause_request.py)."""
        return f"{self.prefix}:pause:{model}"

    def weights(self, model: str) -> str:
        """The checkpoint folder `model`'s engines are asked to serve the weights of
        (conveyor/weight_update_request.py); absent: `--model`'s."""
        return f"{self.prefix}:weights:{model}"

    def weight_version(self, model: str) -> str:
        """The version a trainer named the weights `model` serves (vLLM's
        `/finish_weight_update`, `/update_weight_version`, `GET /weight_info`)."""
        return f"{self.prefix}:weight-version:{model}"

    def profile(self, model: str) -> str:
        """Whether `model`'s workers are asked to record a torch profile (POST
        /start_profile, /stop_profile: conveyor/profile_request.py)."""
        return f"{self.prefix}:profile:{model}"

    def controls(self, model: str) -> str:
        """Pub/sub channel nudging `model`'s workers to read its `sleep`, `pause`,
        `weights` and `prefix_cache_reset` keys now rather than at their next poll."""
        return f"{self.prefix}:controls:{model}"

    def prefix_cache_reset(self, model: str) -> str:
        """The gen of the latest `POST /reset_prefix_cache` for `model`: each worker empties
        its prefix cache once per new gen and announces the gen it reached."""
        return f"{self.prefix}:prefix-cache-reset:{model}"

    def batch_lease(self, batch_id: str) -> str:
        """Held (with a TTL, renewed) by the one batch worker running this batch."""
        return f"{self.prefix}:batch:{batch_id}:lease"

    def batch_queued(self, batch_id: str) -> str:
        """Set while the batch's task waits for a worker (see `batch_queue.queue_batch`)."""
        return f"{self.prefix}:batch:{batch_id}:queued"

    def batch_line_answer(self, batch_id: str, line: str) -> str:
        """A batch line's 200 answer, kept (with a TTL) until its batch worker records it
        (api/batch_line_answers.py)."""
        return f"{self.prefix}:batch:{batch_id}:answer:{line}"

    def batch_failures(self, batch_id: str) -> str:
        """Runs of the batch in a row that ended in an unexpected error (for back-off)."""
        return f"{self.prefix}:batch:{batch_id}:failures"

    def rate_limit(self, key_id: str, part: str) -> str:
        """One of an API key's sliding-window structures: "admitted", "tokens" or "total".

        The braces are a Redis Cluster hash tag: the limiter's Lua script touches all
        parts of one key in a single call, so they must live in the same slot.
        """
        return f"{self.prefix}:ratelimit:{{{key_id}}}:{part}"
