"""OpenAI's request fields that label or route a request rather than shape its output.

`metadata` (batches, responses, chat) is checked against OpenAI's limits, and
`service_tier` against OpenAI's names, so a malformed value is the 400 OpenAI
gives rather than something stored or echoed back as sent. Every request runs
in the one tier this server has, which answers report as "default".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator

METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512

ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]
# The tier a request was processed in, as OpenAI reports it (not the tier asked for).
PROCESSED_SERVICE_TIER = "default"


def metadata_bounds(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits on `metadata`; a ValueError names the one broken."""
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


Metadata = Annotated[dict[str, str] | None, AfterValidator(metadata_bounds)]
