"""Alembic's entry point, for `models.database.migrate()` and the `alembic` command alike.

The URL is `models.database.database_url()` (DATABASE_URL or the SQLite file under .data/) unless
the caller hands over a connection in `config.attributes["connection"]`.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from models.database import UTCDateTime, database_url, get_engine, import_tables

import_tables()

if context.config.config_file_name is not None:  # the command line: log what it does
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

# Any number: migrations on PostgreSQL take this transaction-level lock first, so two processes
# starting at once (the worker and the dev stack) upgrade one after the other.
MIGRATION_LOCK = 7_401_207


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write the project's column types as plain SQLAlchemy ones: a migration must not change when
    a model's Python type does, nor import sqlmodel or models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table by copy, drop and rename; with foreign keys on, dropping a
        # referenced table fails or cascades. The pragma is ignored inside a transaction.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=sqlite,  # SQLite alters most things only by rebuilding the table
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.run_migrations()
    if sqlite:
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()
        if broken:
            raise RuntimeError(f"the migration left rows with dangling foreign keys: {broken}")


def run_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url") or database_url(),
        target_metadata=SQLModel.metadata,
        render_item=render_item,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        run_migrations(given)
        return
    url = context.config.get_main_option("sqlalchemy.url") or database_url()
    with get_engine(url).connect() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
