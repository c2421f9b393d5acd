"""What a worker sets up in Redis before it takes work: groups, tokenizer, model name.

API processes never load the model, yet they tokenize prompts and apply the
chat template, so the worker publishes the tokenizer files themselves in a
hash, with a digest the API can cache them by. `config.json` is cut down to
what tokenization needs (EOS ids and the context length), not the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import redis

from conveyor.bus import (
    LANES,
    TOKENIZER_DIGEST_FIELD,
    TOKENIZER_FILES,
    WORKER_GROUP,
    BusNames,
)
from conveyor.served_names import ServedNames
from engine.generation_defaults import GENERATION_CONFIG_FILE
from engine.llm_engine import LLMEngine


def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the stream and its consumer group unless another worker already did.

    The group starts at the stream's beginning: every entry still in a stream is unserved
    (a served one is acked and deleted), e.g. one an API queued after a Redis restart
    before any worker had made the group again."""
    try:
        client.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def tokenizer_fields(
    engine: LLMEngine, sampling_defaults: Mapping[str, int | float]
) -> dict[str, str]:
    """The hash published for API processes: file name -> contents, plus `digest`.

    `generation_config.json` carries the sampling defaults this worker serves
    (engine/generation_defaults.py), not the model's file as it is."""
    folder = Path(engine.resolved.tokenizer_dir)
    fields: dict[str, str] = {}
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            fields[name] = path.read_text(encoding="utf-8")
    fields[GENERATION_CONFIG_FILE] = json.dumps(dict(sampling_defaults), sort_keys=True)
    # A --chat-template override lives only in this process; API processes need it too.
    template = engine.tokenizer.hf_tokenizer.chat_template
    if engine.config.chat_template is not None and isinstance(template, str):
        fields["chat_template.jinja"] = template
    mc = engine.model_config
    fields["config.json"] = json.dumps(
        {
            "eos_token_id": sorted(engine.eos_token_ids),
            "max_model_len": engine.max_model_len,
            # The server's --max-logprobs, which the API enforces before queueing.
            "max_logprobs": engine.config.max_logprobs,
            # Which embedding `dimensions` the API may accept (engine/pooling_params.py).
            "hidden_size": mc.hidden_size,
            "is_matryoshka": mc.is_matryoshka,
            "matryoshka_dimensions": list(mc.matryoshka_dimensions),
            # A classifier's labels: /classify names them, /score needs exactly one.
            "labels": list(mc.labels),
            # How /score joins a pair for it: a classifier_from_token model (a chat model
            # such as Qwen3-Reranker) reads the two texts as one, as in vLLM.
            "concat_pairs": mc.classifier_head is not None,
            # Whether a pair's second text is marked (BERT's token type 1): the API then
            # says where it starts (PoolingParams.segment_start).
            "type_vocab_size": mc.type_vocab_size,
            # Its output is harmony messages, which the API parses (api/harmony_parser.py).
            "harmony": mc.writes_harmony,
        }
    )
    digest = hashlib.sha256()
    for name in sorted(fields):
        for part in (name, fields[name]):
            data = part.encode("utf-8")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    fields[TOKENIZER_DIGEST_FIELD] = digest.hexdigest()
    return fields


class Announcer:
    """Announces once at start, and again if Redis lost it all (restart, flush: NOGROUP)."""

    def __init__(
        self,
        client: redis.Redis,
        names: BusNames,
        engine: LLMEngine,
        sampling_defaults: Mapping[str, int | float],
        aliases: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.names = names
        self.model = engine.model_name
        self.served = ServedNames(engine.model_name, aliases, tuple(engine.lora_paths))
        self.fields = tokenizer_fields(engine, sampling_defaults)  # read from disk once

    def announce(self) -> None:
        names, model = self.names, self.model
        for lane in LANES:  # every lane, so intake can block on all of them at once
            ensure_group(self.client, names.requests(model, lane))
        key = names.tokenizer(model)
        pipe = self.client.pipeline(transaction=True)  # readers never see a half-written hash
        pipe.delete(key)
        pipe.hset(key, mapping=self.fields)
        # 503 (not 404) for the model, its other names and adapters while workers restart;
        # renewed by each heartbeat (workers/heartbeat.py).
        self.served.mark_known(pipe, names)
        pipe.execute()
