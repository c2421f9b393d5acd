"""Projects and keys rendered as OpenAI's organization objects.

Here rather than in api/schemas because `conveyor projects|keys` prints the
same objects the admin API returns.
"""

from __future__ import annotations

from typing import Any

from conveyor.db.api_key import ApiKey
from conveyor.db.project import Project


def project_object(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "object": "organization.project",
        "name": project.name,
        "created_at": project.created_at,
        "archived_at": project.archived_at,
        "status": project.status,
    }


def api_key_object(key: ApiKey, *, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "organization.project.api_key",
        "id": key.id,
        "name": key.name,
        "redacted_value": key.redacted_value,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "project_id": key.project_id,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "revoked_at": key.revoked_at,
    }
    if secret is not None:
        data["value"] = secret
    return data
