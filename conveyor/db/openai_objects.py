"""Projects, keys and files rendered as OpenAI's objects.

Here rather than in api/schemas because `conveyor projects|keys` prints the
same objects the admin API returns, and the batch worker renders files too.
"""

from __future__ import annotations

from typing import Any

from conveyor.db.api_key import ApiKey
from conveyor.db.batch import Batch
from conveyor.db.project import Project
from conveyor.db.stored_file import StoredFile


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


def file_object(stored: StoredFile) -> dict[str, Any]:
    """OpenAI's file object; `status` and `status_details` are deprecated there but still sent."""
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created_at,
        "expires_at": stored.expires_at,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": stored.status,
        "status_details": None,
    }


def file_deleted_object(file_id: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": True}


def batch_object(batch: Batch) -> dict[str, Any]:
    """OpenAI's batch object, counts and timestamps as the batch worker last recorded them."""
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": batch.errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "usage": batch.usage,
        "metadata": batch.metadata_,
    }
