"""Alembic migrations: the only way conveyor's schema is made (`conveyor db upgrade`)."""
