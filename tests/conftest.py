"""Shared test peers: real Temporal servers from the venv, a real database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from temporalio.testing import WorkflowEnvironment

# Every workflow in the tests (and in the workers they start) runs in Temporal's sandbox, which
# refuses non-deterministic calls in workflow code; the worker's default is unsandboxed.
os.environ.setdefault("WORKFLOW_SANDBOX", "true")

from models.database import get_engine, migrate, session
from models.demo import seed_demo
from models.settings import Settings, get_settings
from peers.twilio_api import TwilioApiServer
from testkit.browser import BrowserMissing, chromium
from testkit.peers import Inbox, running_inbox, running_twilio_api
from testkit.servers import start_dev_server, start_time_skipping_server
from testkit.workers import fresh_task_queue


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_time_skipping_server()
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    yield env
    await env.shutdown()


# Every test that takes `engine` or `empty_engine` runs once per backend: ids end in [sqlite] or
# [postgresql]; `--db sqlite` (or TEST_DATABASE=sqlite) runs one backend only.
BACKENDS = ("sqlite", "postgresql")
# The server that .ci/postgres.sh sets up; TEST_POSTGRES_URL names another one (its role needs
# CREATEDB: each test gets a database of its own).
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://flows_test:flows_test@127.0.0.1:5433/flows_test"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=("both", *BACKENDS),
        default=os.environ.get("TEST_DATABASE", "both"),
        help="database backend(s) for tests that use one (default: both)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("--db")
    if chosen == "both":
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        (keep if backend in (None, chosen) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _seed(db: Engine) -> None:
    with session(db) as s:
        seed_demo(s)


@pytest.fixture(scope="session")
def sqlite_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Database files migrated (and seeded) once per session; each test copies one."""
    folder = tmp_path_factory.mktemp("templates")
    templates: dict[str, Path] = {}
    for name in ("empty", "demo"):
        path = folder / f"{name}.db"
        db = get_engine(f"sqlite:///{path}")
        migrate(db)
        if name == "demo":
            _seed(db)
        # Closing the last connection checkpoints the WAL into the file: the copy is complete.
        db.dispose()
        assert not path.with_name(f"{path.name}-wal").exists()
        templates[name] = path
    return templates


class PostgresServer:
    """Template databases migrated (and seeded) once per session; each test gets a new database
    copied from one, dropped afterwards. Names carry the pid: runs on one server don't collide.

    A background thread copies the next test's database and drops the last one while tests run:
    a copy and a drop cost about 40 ms each on an idle machine, several times that when busy.
    """

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        # AUTOCOMMIT: CREATE/DROP DATABASE refuse to run inside a transaction.
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.prefix = f"flows_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.numbers = itertools.count(1)
        self.templates: dict[str, str] = {}
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-databases")
        self.ready: dict[str, Future[str]] = {}

    def _url(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}_{next(self.numbers)}"
        # FILE_COPY (PostgreSQL 15+) beats the default WAL_LOG for small databases.
        clause = f' TEMPLATE "{self.templates[template]}" STRATEGY FILE_COPY' if template else ""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
        return self._url(name)

    def drop(self, url: str) -> None:
        # FORCE: a worker thread of the test may still hold a connection.
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def take(self, template: str) -> str:
        """A fresh copy of the template, made ahead of time where possible."""
        made = self.ready.pop(template, None) or self.background.submit(self.create, template)
        self.ready[template] = self.background.submit(self.create, template)
        return made.result()

    def give_back(self, url: str) -> None:
        self.background.submit(self.drop, url)

    def close(self) -> None:
        for made in self.ready.values():
            self.background.submit(self.drop, made.result())
        self.background.shutdown(wait=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(POSTGRES_URL)
    try:
        with server.admin.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version_num").scalar_one()
    except OperationalError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        message = (
            f"no PostgreSQL at {server.url} ({reason}); start one with "
            "`sudo bash .ci/postgres.sh` or set TEST_POSTGRES_URL"
        )
        # CI sets TEST_POSTGRES_REQUIRED: there a missing server is a failure, not a skip.
        if os.environ.get("TEST_POSTGRES_REQUIRED"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert int(version) >= 150000, f"PostgreSQL 15 or newer is needed, found {version}"
    made: list[str] = []
    try:
        for name in ("empty", "demo"):
            url = server.create()
            made.append(url)
            db = get_engine(url)
            migrate(db)
            if name == "demo":
                _seed(db)
            db.dispose()  # CREATE DATABASE ... TEMPLATE needs the template to have no sessions
            server.templates[name] = str(make_url(url).database)
        yield server
    finally:
        server.close()
        for url in made:
            server.drop(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@contextmanager
def _fresh_database(
    request: pytest.FixtureRequest, backend: str, template: str
) -> Iterator[Engine]:
    # Session fixtures are looked up lazily so that SQLite tests never wait on PostgreSQL.
    if backend == "sqlite":
        path: Path = request.getfixturevalue("tmp_path") / "flows.db"
        shutil.copyfile(request.getfixturevalue("sqlite_templates")[template], path)
        db = get_engine(f"sqlite:///{path}")
        try:
            yield db
        finally:
            db.dispose()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.take(template)
    db = get_engine(url)
    try:
        yield db
    finally:
        db.dispose()
        server.give_back(url)


@pytest.fixture
def engine(request: pytest.FixtureRequest, backend: str) -> Iterator[Engine]:
    """A database of its own for this test, migrated and seeded with the demo CRM."""
    with _fresh_database(request, backend, "demo") as db:
        yield db


@pytest.fixture
def empty_engine(request: pytest.FixtureRequest, backend: str) -> Iterator[Engine]:
    """A database of its own for this test, migrated, with no rows."""
    with _fresh_database(request, backend, "empty") as db:
        yield db


@pytest.fixture
def smtp_inbox(tmp_path: Path) -> Iterator[Inbox]:
    with running_inbox(tmp_path) as inbox:
        yield inbox


@pytest.fixture
def twilio_api() -> Iterator[TwilioApiServer]:
    with running_twilio_api() as server:
        yield server


@pytest.fixture
def task_queue() -> str:
    return fresh_task_queue()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """``settings_env(NAME=value, ...)``: the environment's settings variables for this test are
    exactly these, and the settings are read from them (and again after the test)."""

    def use(**variables: str) -> Settings:
        variables = {"WORKFLOW_SANDBOX": "true", **variables}  # the tests' own default (above)
        unknown = set(variables) - set(Settings.variables())
        assert not unknown, f"not settings variables: {sorted(unknown)}"
        for name in Settings.variables():
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return get_settings()

    yield use
    get_settings.cache_clear()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, headless, for the tests of web pages."""
    try:
        with chromium(1400, 900) as driver:
            yield driver
    except BrowserMissing as missing:
        pytest.fail(str(missing))
