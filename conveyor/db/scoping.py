"""Which project's objects a caller sees: its own, or (no project) only unowned ones."""

from __future__ import annotations

from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstrumentedAttribute


def owned_by(
    column: InstrumentedAttribute[str | None], project_id: str | None
) -> ColumnElement[bool]:
    """SQL `= project_id`, or `IS NULL` for no project (`= NULL` would match nothing)."""
    return column.is_(None) if project_id is None else column == project_id
