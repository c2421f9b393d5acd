"""`/v1/batches` request shapes, validated as OpenAI validates them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.files import ExpiresAfter
from api.schemas.null_means_default import NullMeansDefault
from api.schemas.request_metadata import Metadata

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")


class BatchCreate(NullMeansDefault):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: Metadata = None
    # The lifetime of the output and error files the batch writes (None: until deleted).
    output_expires_after: ExpiresAfter | None = None
