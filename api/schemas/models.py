"""`/v1/models` shapes: OpenAI's model object plus vLLM's `max_model_len` and `permission`."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field


class ModelPermission(BaseModel):
    """vLLM's permission entry (OpenAI's older model object had one): what clients of
    the model may do. Its id is derived from the model's, so listing and retrieving a
    model give the same card."""

    id: str
    object: Literal["model_permission"] = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False

    @classmethod
    def of(cls, model_id: str, created: int) -> ModelPermission:
        return cls(id=f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, model_id).hex}", created=created)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "conveyor"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)
