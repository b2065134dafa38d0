"""The migrations are the schema: they must build exactly what the models describe, on each backend.

A model change without its migration fails here; `make migration m="..."` writes the missing one.
"""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlmodel import SQLModel

from models.database import alembic_config, import_tables, migrate


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        return str(value) if value is not None else None


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}


def test_migrations_produce_the_models_schema(empty_engine: Engine) -> None:
    config = alembic_config()
    with empty_engine.connect() as conn:
        config.attributes["connection"] = conn
        # Autogenerate against the migrated database: any difference (a table, column, type,
        # index or constraint) raises and names the operations a new migration would hold.
        command.check(config)
    head = ScriptDirectory.from_config(config).get_current_head()
    assert _revision(empty_engine) == head


def test_downgrade_to_nothing_and_back(empty_engine: Engine) -> None:
    import_tables()
    config = alembic_config()
    with empty_engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert _tables(empty_engine) == set()
    migrate(empty_engine)
    assert _tables(empty_engine) == set(SQLModel.metadata.tables)


def test_a_database_made_before_migrations_is_adopted(empty_engine: Engine) -> None:
    # Such a database has the first migration's tables (create_all at the time) and no
    # alembic_version table.
    config = alembic_config()
    base = ScriptDirectory.from_config(config).get_base()
    with empty_engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        command.upgrade(config, str(base))
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.commit()
    migrate(empty_engine)
    migrate(empty_engine)  # a second start changes nothing
    with empty_engine.connect() as conn:
        config.attributes["connection"] = conn
        command.check(config)
