"""Cursor pagination as OpenAI's list endpoints do it: `limit` items after the id `after`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from conveyor.db.ids import created_second

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
    id_prefix: str | None = None,
) -> Page[Any]:
    """Order by (created_at, id) and continue strictly after the cursor's row.

    `cursor_scope` is where `after` is looked up (default: `query`): the list's
    owner scope without its filters, so that a row which left the filtered
    list between two pages (a key revoked, a project archived while a client
    pages through and acts on each item) still marks the place to continue.
    With `id_prefix` (lists whose objects are deleted for good), the id of an
    object that no longer exists marks its place by the time in the id: the
    SDK's `for f in client.files.list(): client.files.delete(f.id)` asks for
    the next page after a file it has just deleted. Another owner's id is read
    the same way, so that a 400 cannot tell a tenant that the id exists elsewhere.
    """
    if after is not None:
        scope = query if cursor_scope is None else cursor_scope
        anchor = session.execute(
            scope.with_only_columns(created_at, id_column).where(id_column == after)
        ).first()
        if anchor is None:
            anchor = _anchor_by_id_time(after, id_prefix)
        key = tuple_(created_at, id_column)
        query = query.where(key < tuple_(*anchor) if descending else key > tuple_(*anchor))
    order = (created_at.desc(), id_column.desc()) if descending else (created_at, id_column)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def _anchor_by_id_time(after: str, prefix: str | None) -> tuple[int, str]:
    """(created_at, id) of an object outside the list (deleted, or another owner's) from
    the time in its id; an id that `new_id` never made is no cursor."""
    second = created_second(after, prefix) if prefix is not None else None
    if second is None:
        raise UnknownCursor(after)
    return second, after
