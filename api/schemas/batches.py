"""`/v1/batches` request shapes, validated as OpenAI validates them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.files import ExpiresAfter

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    # The lifetime of the output and error files the batch writes (None: until deleted).
    output_expires_after: ExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return metadata_bounds(value)


def metadata_bounds(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits on an object's `metadata` (batches, responses); a ValueError names one."""
    if value is None:
        return None
    if len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"at most {METADATA_MAX_PAIRS} key-value pairs")
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX:
            raise ValueError(f"keys are at most {METADATA_KEY_MAX} characters")
        if len(item) > METADATA_VALUE_MAX:
            raise ValueError(f"values are at most {METADATA_VALUE_MAX} characters")
    return value
