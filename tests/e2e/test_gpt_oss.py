"""gpt-oss on the real `conveyor serve` tree, through the official SDK: a random model
with harmony's tokenizer, whose worker publishes harmony, answers a JSON schema in its
final channel's message, and the API hands back that message alone as `content`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from engine.tokenizer import Tokenizer

from .conftest import serving

MODEL = "gpt-oss"
SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model_dir(make_random_model: Callable[[str], Path]) -> Path:
    return make_random_model("gpt_oss")


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[openai.OpenAI]:
    with serving(model_dir, CONVEYOR_SERVED_MODEL_NAME=MODEL, CONVEYOR_MAX_MODEL_LEN="512") as (
        base_url,
        _,
    ):
        sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        yield sdk
        sdk.close()


def test_a_schema_is_answered_in_the_final_message(client: openai.OpenAI, model_dir: Path) -> None:
    """The engine frames the constraint as harmony (an analysis message, if the model
    opens one, which <|end|>, biased up, cuts short; then the final channel's), keeps
    the markers for the API, and the API parses them off: whole and streamed alike."""
    end = Tokenizer.load(model_dir).hf_tokenizer.convert_tokens_to_ids("<|end|>")
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "A number?"}],
        "max_tokens": 60,
        "temperature": 0,
        "logit_bias": {str(end): 100},
        "extra_body": {"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True}},
    }
    whole = client.chat.completions.create(**request)  # type: ignore[call-overload]
    content = whole.choices[0].message.content or ""
    assert isinstance(json.loads(content)["n"], int)
    assert whole.choices[0].finish_reason == "stop"
    reasoning = (whole.choices[0].message.model_extra or {}).get("reasoning") or ""
    assert "<|" not in content + reasoning
    chunks = list(client.chat.completions.create(**request, stream=True))  # type: ignore[call-overload]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == content
