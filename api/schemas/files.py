"""`/v1/files` shapes: which purposes an upload may name, list limits, the file objects.

OpenAI accepts uploads for `assistants`, `batch`, `fine-tune`, `vision`,
`user_data` and `evals`, and makes `batch_output`, `assistants_output` and
`fine-tune-results` files itself. conveyor serves the Batch API, so it takes
`batch` (batch input) and `user_data` (plain storage, useful to anyone); the
purposes of features it lacks are refused rather than stored for nothing,
and the server-made purposes can never be uploaded.
"""

from __future__ import annotations

from api.errors import ApiError, bad_request
from conveyor.db.openai_objects import file_deleted_object, file_object

__all__ = ["file_deleted_object", "file_object"]

UPLOAD_PURPOSES = ("batch", "user_data")
# OpenAI's upload purposes for features conveyor does not have.
UNSUPPORTED_PURPOSES = frozenset({"assistants", "fine-tune", "vision", "evals"})
# Purposes of files the server makes (the batch worker writes `batch_output`).
GENERATED_PURPOSES = frozenset({"batch_output", "assistants_output", "fine-tune-results"})

_CHOICES = " or ".join(f"'{p}'" for p in UPLOAD_PURPOSES)

LIST_LIMIT_DEFAULT = 10_000  # OpenAI's default and maximum for files
LIST_LIMIT_MAX = 10_000


def check_upload_purpose(purpose: str) -> str:
    """The purpose if an upload may name it; otherwise a 400 that says why."""
    if purpose in UPLOAD_PURPOSES:
        return purpose
    if purpose in GENERATED_PURPOSES:
        message = f"'{purpose}' files are created by the server and cannot be uploaded"
        raise bad_request(message, param="purpose")
    if purpose in UNSUPPORTED_PURPOSES:
        raise ApiError(
            400,
            f"purpose '{purpose}' is not supported by this server; use {_CHOICES}",
            param="purpose",
            code="not_supported",
        )
    raise bad_request(f"'{purpose}' is not a valid purpose; use {_CHOICES}", param="purpose")
