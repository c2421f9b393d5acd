"""`/v1/organization/...` shapes: OpenAI's project and project API key objects.

Keys carry conveyor's additions (`project_id`, `rpm`, `tpm`, `revoked_at`);
the secret `value` appears only in the answer to the create call.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor.db.openai_objects import api_key_object, project_object
from conveyor.db.pagination import Page

__all__ = ["api_key_object", "project_object"]

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
MAX_LIMIT = 2**31 - 1  # the rpm/tpm columns are 32-bit on PostgreSQL


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectCreate(_Body):
    name: str = Field(min_length=1, max_length=200)


class ProjectUpdate(_Body):
    name: str = Field(min_length=1, max_length=200)


class ApiKeyCreate(_Body):
    name: str = Field(default="", max_length=200)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="tokens per minute")


class ApiKeyUpdate(_Body):
    """Change a key's name or limits; an explicit null removes a limit."""

    name: str | None = Field(default=None, max_length=200)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


def list_object(page: Page[Any], render: Any) -> dict[str, Any]:
    data = [render(item) for item in page.items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }
