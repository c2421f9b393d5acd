"""SQL storage: the schema (SQLAlchemy 2 models), the database handle and the queries.

The schema is made only by the Alembic migrations in `migrations/`; the models
here describe it for queries and for `alembic revision --autogenerate`.
"""
