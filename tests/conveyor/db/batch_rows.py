"""A batch row in a given status, for tests of what happens to batches around it."""

from __future__ import annotations

from conveyor.db import batch_store
from conveyor.db.database import Database


def batch_in(db: Database, project_id: str, api_key_id: str, status: str) -> str:
    """A chat batch of `project_id`, created with `api_key_id`, now in `status`; its id."""
    with db.session() as session:
        made = batch_store.create_batch(
            session,
            project_id=project_id,
            api_key_id=api_key_id,
            input_file_id="file-in",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=None,
        )
        made.status = status
        return made.id
