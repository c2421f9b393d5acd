"""Every table, imported in one place so `Base.metadata` is complete (Alembic, tests)."""

from conveyor.db.api_key import ApiKey
from conveyor.db.base import Base
from conveyor.db.batch import Batch
from conveyor.db.batch_result import BatchResult
from conveyor.db.project import Project
from conveyor.db.request_log import RequestLog
from conveyor.db.stored_file import StoredFile
from conveyor.db.stored_response import StoredResponse

__all__ = [
    "ApiKey",
    "Base",
    "Batch",
    "BatchResult",
    "Project",
    "RequestLog",
    "StoredFile",
    "StoredResponse",
]
