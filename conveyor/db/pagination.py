"""Cursor pagination as OpenAI's list endpoints do it: `limit` items after the id `after`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


class UnknownCursor(LookupError):
    """`after` names no object in this list."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def paginate(
    session: Session,
    query: Select[Any],
    *,
    created_at: InstrumentedAttribute[int],
    id_column: InstrumentedAttribute[str],
    after: str | None,
    limit: int,
    descending: bool = False,
    cursor_scope: Select[Any] | None = None,
) -> Page[Any]:
    """Order by (created_at, id) and continue strictly after the cursor's row.

    `cursor_scope` is where `after` is looked up (default: `query`): the list's
    owner scope without its filters, so that a row which left the filtered
    list between two pages (a key revoked, a project archived while a client
    pages through and acts on each item) still marks the place to continue.
    """
    if after is not None:
        scope = query if cursor_scope is None else cursor_scope
        anchor = session.execute(
            scope.with_only_columns(created_at, id_column).where(id_column == after)
        ).first()
        if anchor is None:
            raise UnknownCursor(after)
        key = tuple_(created_at, id_column)
        query = query.where(key < tuple_(*anchor) if descending else key > tuple_(*anchor))
    order = (created_at.desc(), id_column.desc()) if descending else (created_at, id_column)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)
