"""The declarative base every table shares, with constraint names Alembic can rely on."""

from __future__ import annotations

import time

from sqlalchemy import BigInteger, Integer, MetaData
from sqlalchemy.orm import DeclarativeBase

# Named constraints make migrations portable: SQLite's batch mode and PostgreSQL
# both need a name to drop or alter a constraint.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Unix seconds, as OpenAI's objects carry them; 64-bit so they outlive 2038.
Timestamp = BigInteger

# An auto-incrementing 64-bit key that SQLite also numbers (it only does for INTEGER).
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def now() -> int:
    """Unix seconds, the unit of every `*_at` column."""
    return int(time.time())
