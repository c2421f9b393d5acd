"""`/v1/files` shapes: which purposes an upload may name, list limits, the file objects.

OpenAI accepts uploads for `assistants`, `batch`, `fine-tune`, `vision`,
`user_data` and `evals`, and makes `batch_output`, `assistants_output` and
`fine-tune-results` files itself. conveyor serves the Batch API, so it takes
`batch` (batch input) and `user_data` (plain storage, useful to anyone); the
purposes of features it lacks are refused rather than stored for nothing,
and the server-made purposes can never be uploaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


# OpenAI's bounds on a file's lifetime: an hour to 30 days after it is made.
EXPIRES_AFTER_MIN = 3600
EXPIRES_AFTER_MAX = 2_592_000
EXPIRES_AFTER_FIELDS = ("expires_after[anchor]", "expires_after[seconds]")


class ExpiresAfter(BaseModel):
    """When a file goes (`expires_after` on an upload, `output_expires_after` on a batch
    for the files it writes): `seconds` after it is made. Unset: kept until deleted."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=EXPIRES_AFTER_MIN, le=EXPIRES_AFTER_MAX)


def check_expires_after_field(name: str, value: str) -> None:
    """One multipart field of an upload's `expires_after` (the SDK sends
    `expires_after[anchor]` and `expires_after[seconds]`); a 400 naming it if wrong."""
    if name == "expires_after[anchor]":
        if value != "created_at":
            raise bad_request(
                f"expires_after.anchor must be 'created_at', got {value!r}",
                param="expires_after.anchor",
            )
        return
    if name != "expires_after[seconds]":
        raise bad_request(
            f"unexpected field `{name}`: expires_after has anchor and seconds",
            param="expires_after",
        )
    try:
        seconds = int(value)
    except ValueError:
        seconds = None
    if seconds is None or not EXPIRES_AFTER_MIN <= seconds <= EXPIRES_AFTER_MAX:
        raise bad_request(
            f"expires_after.seconds must be a whole number from {EXPIRES_AFTER_MIN} to "
            f"{EXPIRES_AFTER_MAX} (an hour to 30 days), got {value!r}",
            param="expires_after.seconds",
        )


def expires_after_of(fields: dict[str, str]) -> int | None:
    """The upload's lifetime in seconds (fields already checked); None when not given."""
    given = [name for name in EXPIRES_AFTER_FIELDS if name in fields]
    if not given:
        return None
    if len(given) == 1:
        raise bad_request("expires_after needs both anchor and seconds", param="expires_after")
    return int(fields["expires_after[seconds]"])
