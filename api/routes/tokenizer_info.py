"""GET /tokenizer_info (vLLM's --enable-tokenizer-info-endpoint): a model's
tokenizer_config.json as its workers published it, with the chat template the API
renders with, for clients that tokenize or render prompts themselves.

Off unless the flag is given, as in vLLM: it shows the chat template, which an operator
may treat as private.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter

from api.deps import Authenticated, CatalogDep, NamesDep, RedisDep

router = APIRouter(dependencies=[Authenticated])

CONFIG_FILE = "tokenizer_config.json"


@router.get("/tokenizer_info")
async def tokenizer_info(
    catalog: CatalogDep, redis: RedisDep, names: NamesDep, model: str | None = None
) -> dict[str, Any]:
    name = model or await catalog.default_model()
    live = await catalog.resolve(name)
    tokenizer = (await catalog.tokenizer(live.queue_model)).tokenizer.hf_tokenizer
    raw = await redis.hget(names.tokenizer(live.queue_model), CONFIG_FILE)
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    info.setdefault("tokenizer_class", type(tokenizer).__name__)
    info["chat_template"] = tokenizer.chat_template  # --chat-template's, when given
    return info
