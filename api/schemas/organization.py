"""`/v1/organization/...` shapes: OpenAI's project and project API key objects.

Keys carry conveyor's additions (`project_id`, `rpm`, `tpm`, `revoked_at`);
the secret `value` appears only in the answer to the create call.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from conveyor.db.openai_objects import api_key_object, project_object
from conveyor.db.pagination import Page
from conveyor.display_names import key_name, project_name

__all__ = ["api_key_object", "project_object"]

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
MAX_LIMIT = 2**31 - 1  # the rpm/tpm columns are 32-bit on PostgreSQL


KeyName = Annotated[str, Field(max_length=200), AfterValidator(key_name)]
ProjectName = Annotated[str, Field(max_length=200), AfterValidator(project_name)]
# Strict: `true` or "10" as a limit is a client's mistake, not 1 or 10 requests a minute.
Limit = Annotated[StrictInt, Field(ge=1, le=MAX_LIMIT)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectCreate(_Body):
    name: ProjectName


class ProjectUpdate(_Body):
    name: ProjectName


class ApiKeyCreate(_Body):
    name: KeyName = ""
    rpm: Limit | None = Field(default=None, description="requests per minute")
    tpm: Limit | None = Field(default=None, description="tokens per minute")


class ApiKeyUpdate(_Body):
    """Change a key's name or limits; an explicit null removes a limit."""

    name: KeyName | None = None
    rpm: Limit | None = None
    tpm: Limit | None = None


def list_object(page: Page[Any], render: Any) -> dict[str, Any]:
    data = [render(item) for item in page.items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }
