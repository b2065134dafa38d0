"""Engine, sessions and the column types shared by every table module."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, event, inspect
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel, create_engine

from models.settings import get_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = PROJECT_ROOT / "migrations"

# Named constraints, the same on every backend: a later migration can drop or alter them by name
# (SQLite's batch mode needs the names; PostgreSQL would otherwise invent its own). Set before any
# table class is defined; "ix" keeps SQLAlchemy's default index names.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def utcnow() -> datetime:
    """Timezone-aware now in UTC; the default factory for every timestamp column."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always returns aware UTC datetimes.

    SQLite keeps no offset and hands back naive values; PostgreSQL returns the session's zone.
    Naive input is taken to be UTC already.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def database_url() -> str:
    """`DATABASE_URL`, or a SQLite file under `<project root>/.data/`."""
    url = get_settings().database_url
    if url:
        return url
    data_dir = PROJECT_ROOT / ".data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'flows.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL + busy timeout: activities write from a thread pool, so readers must not block writers
    # and concurrent writers must wait instead of failing with "database is locked".
    # synchronous=NORMAL: a commit is safe from a killed process at once, and on disk at the next
    # checkpoint, so a power cut may take back the last moments' commits but never corrupts the
    # file. Syncing every commit cost a fifth of an email's CPU (four commits per send); the one
    # commit an outside act depends on syncs itself (``fully_synced``).
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={_SQLITE_SYNC}")
    finally:
        cursor.close()


_SQLITE_SYNC = "NORMAL"


@contextmanager
def fully_synced(connection: Connection) -> Iterator[Connection]:
    """``connection`` with its commits on disk before they return, on SQLite too (whose commits
    otherwise wait for the next checkpoint): for a commit that an act outside the database
    follows, which a power cut must not take back (the delivery ledger's point of no return).
    PostgreSQL syncs every commit already."""
    driver = connection.connection.driver_connection
    if connection.dialect.name != "sqlite" or driver is None:
        yield connection
        return
    # On the driver's connection: 1.5 µs a pragma, against 7 through SQLAlchemy's execution.
    driver.execute("PRAGMA synchronous=FULL")
    try:
        yield connection
    finally:
        driver.execute(f"PRAGMA synchronous={_SQLITE_SYNC}")


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL for the whole process (engines own the connection pool)."""
    resolved = url or database_url()
    with _engines_lock:
        engine = _engines.get(resolved)
        if engine is not None:
            return engine
        if make_url(resolved).get_backend_name() == "sqlite":
            engine = create_engine(
                resolved, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(resolved, pool_pre_ping=True)
        _engines[resolved] = engine
        return engine


def import_tables() -> None:
    """Register every table class on `SQLModel.metadata` (Alembic compares against it)."""
    from models import accounts, crm, experiments  # noqa: F401
    from models import engine as engine_tables  # noqa: F401


def alembic_config() -> Config:
    """The project's Alembic settings, independent of the working directory and of alembic.ini
    (which only the `alembic` command line reads)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(target: Engine | str | None = None) -> None:
    """Upgrade the database to the newest migration (`DATABASE_URL` when no target is given).

    A database made by the old `create_all` (tables, no `alembic_version`) is taken to be at the
    first migration and upgraded from there.
    """
    engine = target if isinstance(target, Engine) else get_engine(target)
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        connection.rollback()
        if "alembic_version" not in tables and "contacts" in tables:
            base = ScriptDirectory.from_config(config).get_base()
            assert base is not None
            command.stamp(config, base)
        command.upgrade(config, "head")


def create_tables(engine: Engine) -> None:
    """Kept for its callers: the schema comes from the migrations, never from `create_all`, so
    every database carries its Alembic revision and later migrations apply to it."""
    migrate(engine)


@contextmanager
def session(engine: Engine | None = None) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on error."""
    # expire_on_commit=False: callers read ids and fields after the block has committed.
    with Session(engine or get_engine(), expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
