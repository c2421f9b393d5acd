"""Database mistakes an operator makes (a wrong password, a database that is not
there, a URL with no driver, a schema not yet migrated, a revision that does not
exist) said in one line, not a hundred lines of SQLAlchemy and Alembic traceback
whose last line was the only useful one.
"""

from __future__ import annotations

import logging

from alembic.util.exc import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from conveyor.db.database import DatabaseUrlError
from conveyor.db.migrate import SchemaOutOfDate, prepare_schema

logger = logging.getLogger(__name__)

# What an operator can fix; anything else is a bug and keeps its traceback.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUrlError,
    OperationalError,
    InterfaceError,
    SchemaOutOfDate,
    CommandError,
)


def one_line(exc: BaseException) -> str:
    """The driver's own words (not SQLAlchemy's wrapper with its link), on one line."""
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    return "; ".join(" ".join(part.split()) for part in text.splitlines() if part.strip())


def shown(url: str) -> str:
    """The URL for a message, password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparseable URL)"


def describe(url: str, exc: BaseException) -> str:
    """One line for a `DATABASE_ERRORS` error: a connection or URL problem names the
    database (password hidden); a schema or revision problem says which on its own."""
    if isinstance(exc, (DatabaseUrlError, OperationalError, InterfaceError)):
        return f"database {shown(url)}: {one_line(exc)}"
    return one_line(exc)


def schema_ready_at_start(url: str) -> bool:
    """`prepare_schema`, with a problem logged as one line (False) instead of raised."""
    return schema_failure_at_start(url) is None


def schema_failure_at_start(url: str) -> int | None:
    """`prepare_schema`, a problem logged as one line; None when ready, else the exit
    status for it: 1 for a database that did not take the connection (at boot it may not
    be up yet: a supervisor's restart may find it), 2 for what no restart mends (a URL
    that cannot work, a schema not migrated, an unknown revision)."""
    try:
        prepare_schema(url)
    except DATABASE_ERRORS as exc:
        logger.error("%s", describe(url, exc))
        return 1 if isinstance(exc, (OperationalError, InterfaceError)) else 2
    return None
