"""The bench harness every part runs in: servers started here, process meters, a seeded database,
results."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, insert, make_url, select
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker

import worker as worker_module
from activities.email import SmtpSettings
from activities.sms import TwilioSettings
from bench.baseline import BaselinePlan, BaselineWorkflow, baseline_worker
from control.enrollment import START_CONCURRENCY, enroll
from control.flows import deploy_flow
from models.database import get_engine
from models.participant import participant_workflow_id
from models.sending import NO_SENDING_SETTINGS
from testkit.peers import (
    TWILIO_SID,
    TWILIO_TOKEN,
    Inbox,
    inbox_process,
    running_twilio_api,
    twilio_settings,
)
from testkit.servers import LOOPBACK, start_dev_server, start_time_skipping_server
from testkit.waiting import assert_eventually
from testkit.workers import new_worker
from worker import EngineWorker, activities_for

EMAIL_SETTINGS: dict[str, Any] = {
    "subscription_type": "newsletter",
    "from": {"kind": "address", "address": "news@bench.example.com", "name": "Bench"},
}
# Every wait and run is bounded: a stuck part fails with this instead of hanging the run.
RUN_TIMEOUT = timedelta(minutes=10)


class BenchTimeout(Exception):
    pass


# --- the SDK's own warnings --------------------------------------------------------------------

SLOW_TASK = "TMPRL1104"  # "Workflow task duration exceeded 5 seconds"
TASK_NOT_FOUND = "Task not found when completing"  # the server had timed the workflow task out


class CoreWarnings(logging.Handler):
    """Counts the SDK core's warnings by kind (its TMPRL code, or the start of the message);
    each kind is printed the first time only."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = re.search(r"\[(TMPRL\d+)\]", message)
        text = re.sub(r"^\[[^\]]*\]\s*", "", message)
        kind = found.group(1) if found else text.split("{", 1)[0].strip()[:60]
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            print(f"  temporal core (first of its kind): {text[:240]}", file=sys.stderr)


CORE_WARNINGS = CoreWarnings()
_core_logger = logging.getLogger("bench.temporal_core")
_core_logger.propagate = False
_core_logger.addHandler(CORE_WARNINGS)
_runtime: list[Runtime] = []


def bench_runtime() -> Runtime:
    """One SDK runtime for every server's client, forwarding core logs to CORE_WARNINGS."""
    if not _runtime:
        logging_config = LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=_core_logger),
        )
        _runtime.append(Runtime(telemetry=TelemetryConfig(logging=logging_config)))
    return _runtime[0]


# --- processes -----------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        text = handle.read()
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on (comm may hold spaces)


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[1]) == pid:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children_of(current))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), in seconds."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


# ``--postgres URL`` puts the in-process parts' databases on this PostgreSQL server (its role may
# create databases): one database per part, dropped when the run ends.
POSTGRES_SERVER = "BENCH_POSTGRES_URL"
_POSTGRES_PREFIX = f"bench_{os.getpid()}_"


@dataclass(frozen=True)
class Usage:
    """Wall time and CPU of this process (worker, client, peers) and of the server's processes."""

    wall: float
    python_cpu: float
    server_cpu: float
    slow_tasks: int = 0  # workflow tasks that took over 5 s (the SDK's TMPRL1104 warning)
    lost_tasks: int = 0  # workflow task completions the server refused: it had timed them out
    machine_cpu: float = 0.0  # every process on the machine, these two included
    database_cpu: float = 0.0  # the PostgreSQL server's processes (with --postgres)
    python_threads: dict[str, float] = field(default_factory=dict)  # CPU s by kind of thread

    @property
    def other_cores(self) -> float:
        """CPU that other processes on the machine took meanwhile: noise in the figures."""
        other = self.machine_cpu - self.python_cpu - self.server_cpu - self.database_cpu
        return max(other, 0.0) / self.wall if self.wall > 0 else 0.0

    @property
    def python_cores(self) -> float:
        return self.python_cpu / self.wall if self.wall > 0 else 0.0

    @property
    def server_cores(self) -> float:
        return self.server_cpu / self.wall if self.wall > 0 else 0.0


class Meter:
    """Measures one timed section: ``with meter.section() as usage: ...`` then ``usage()``."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _server_cpu(self) -> float:
        if self.server_pid is None:
            return 0.0
        return sum(cpu_seconds(pid) for pid in process_tree(self.server_pid))

    @contextmanager
    def section(self) -> Iterator[Callable[[], Usage]]:
        start_wall, start_py, start_srv = time.perf_counter(), _own_cpu(), self._server_cpu()
        start_slow = CORE_WARNINGS.counts[SLOW_TASK]
        start_lost = CORE_WARNINGS.counts[TASK_NOT_FOUND]
        start_machine = machine_busy_seconds()
        start_database = database_cpu_seconds()
        start_threads, start_peers = thread_cpu(), _peers_cpu()
        result: list[Usage] = []
        try:
            yield lambda: result[0]
        finally:
            peers = _peers_cpu() - start_peers
            own = _own_cpu() - start_py
            threads = _thread_split(start_threads, thread_cpu())
            threads[ENDED_THREADS] = max(own - sum(threads.values()), 0.0)
            result.append(
                Usage(
                    wall=time.perf_counter() - start_wall,
                    python_cpu=own + peers,
                    server_cpu=self._server_cpu() - start_srv,
                    slow_tasks=CORE_WARNINGS.counts[SLOW_TASK] - start_slow,
                    lost_tasks=CORE_WARNINGS.counts[TASK_NOT_FOUND] - start_lost,
                    machine_cpu=machine_busy_seconds() - start_machine,
                    database_cpu=database_cpu_seconds() - start_database,
                    python_threads={**threads, PEERS: peers},
                )
            )


EVENT_LOOP = "event loop thread (SDK Python side: polling, payloads; the client)"
WORKFLOW_THREADS = "workflow threads (workflow code, the SDK's activation handling)"
CORE_THREADS = "SDK core threads (Rust: gRPC, workflow state machines)"
OTHER_THREADS = "other threads (sync activities and local activities, database calls)"
# A worker stopped inside the section takes its pools' threads with it: what they spent is the
# process's CPU that no live thread accounts for (with the kernel's 10 ms ticks of rounding).
ENDED_THREADS = "threads that ended within the section (a worker's pools stopped with it)"
# The SDK runs activations on a pool of its own, its threads named so.
_WORKFLOW_THREAD = "temporal_workflow_"
PEERS = "the SMTP inbox's own process"


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process, with its Python name (the kernel's for the
    SDK core's threads: Python does not give the kernel its threads' names)."""
    named = {thread.native_id: thread.name for thread in threading.enumerate()}
    threads: dict[int, tuple[str, float]] = {}
    base = f"/proc/{os.getpid()}/task"
    for entry in os.listdir(base):
        try:
            with open(f"{base}/{entry}/comm", encoding="utf-8") as handle:
                name = named.get(int(entry)) or handle.read().strip()
            with open(f"{base}/{entry}/stat", encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        threads[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return threads


def _thread_split(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds by kind of thread still alive (``ENDED_THREADS`` covers the others)."""
    split = dict.fromkeys((EVENT_LOOP, WORKFLOW_THREADS, CORE_THREADS, OTHER_THREADS), 0.0)
    for tid, (name, seconds) in after.items():
        spent = seconds - before.get(tid, (name, 0.0))[1]
        if tid == os.getpid():
            split[EVENT_LOOP] += spent
        elif name.startswith(_WORKFLOW_THREAD):
            split[WORKFLOW_THREADS] += spent
        elif name.startswith("tokio"):
            split[CORE_THREADS] += spent
        else:
            split[OTHER_THREADS] += spent
    return split


def _postmasters() -> dict[int, list[int]]:
    """Each PostgreSQL server on this machine (its postmaster's pid) with its child processes:
    the backends and the background processes, whose titles begin ``postgres: ``."""
    servers: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read()
            if title.startswith(b"postgres: "):
                servers.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return servers


def database_cpu_seconds() -> float:
    """CPU seconds of the PostgreSQL server the bench uses (0 on SQLite, whose work is done in
    this process): every process of the server, background ones included, and the backends that
    ended, which their postmaster reaped (its children's CPU: cutime, cstime). Counting only the
    live backends lost a pooled connection's CPU when the pool closed it mid-section, and the
    figure could come out negative. A machine with several PostgreSQL servers counts them all."""
    if not os.environ.get(POSTGRES_SERVER):
        return 0.0
    total = 0.0
    for postmaster, children in _postmasters().items():
        try:
            fields = _stat_fields(postmaster)
        except OSError:
            continue
        own_and_reaped = sum(int(fields[index]) for index in (11, 12, 13, 14)) / _TICK
        total += own_and_reaped + sum(cpu_seconds(child) for child in children)
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK  # user … steal; guest time is inside user


# The peers this process started in processes of their own (the SMTP inbox): counted with it.
PEER_PROCESSES: set[int] = set()


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _peers_cpu() -> float:
    return sum(cpu_seconds(pid) for pid in PEER_PROCESSES)


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    env: WorkflowEnvironment
    pid: int | None  # the server process, a child of this one

    @property
    def client(self) -> Client:
        return self.env.client

    @property
    def meter(self) -> Meter:
        return Meter(self.pid)


def _new_child(before: set[int], names: tuple[str, ...]) -> int | None:
    fresh = [pid for pid in children_of(os.getpid()) if pid not in before]
    named = [pid for pid in fresh if command_name(pid).startswith(names)]
    candidates = named or fresh
    return candidates[0] if candidates else None


@asynccontextmanager
async def dev_server() -> AsyncIterator[Server]:
    """Temporal's dev server, in memory (no --db-filename), on a free loopback port."""
    before = set(children_of(os.getpid()))
    env = await start_dev_server(bench_runtime())
    try:
        yield Server(env, _new_child(before, ("temporal",)))
    finally:
        await env.shutdown()


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[Server]:
    """The time-skipping test server, with the participants' search attributes registered (it
    fails workflow tasks that upsert unknown ones)."""
    before = set(children_of(os.getpid()))
    env = await start_time_skipping_server(bench_runtime())
    try:
        yield Server(env, _new_child(before, ("temporal",)))
    finally:
        await env.shutdown()


@contextmanager
def smtp_inbox(directory: Path) -> Iterator[Inbox]:
    """The kit's SMTP inbox in a process of its own, whose CPU counts with this process's (as
    "peers"); senders to it wait longer than the default, as a burst of hundreds of messages can
    keep it busy."""
    with inbox_process(directory, smtp_timeout=60.0) as inbox:
        assert inbox.pid is not None
        PEER_PROCESSES.add(inbox.pid)
        try:
            yield inbox
        finally:
            PEER_PROCESSES.discard(inbox.pid)


@contextmanager
def twilio_api() -> Iterator[TwilioSettings]:
    """The local Twilio-compatible API, and settings that send to it."""
    with running_twilio_api() as server:
        yield twilio_settings(server)


# --- the database --------------------------------------------------------------------------------


_postgres_databases = itertools.count(1)


def temp_database(directory: Path) -> Engine:
    """A fresh database with every table the worker's activities use: a SQLite file in
    ``directory``, or a new database on the ``--postgres`` server.

    The tables come from the models (importing ``worker`` registered them all), not from the
    migrations: the bench measures the engine, and tests/test_migrations.py keeps the two equal.
    """
    server = os.environ.get(POSTGRES_SERVER)
    url = f"sqlite:///{directory / 'bench.db'}" if not server else _postgres_database(server)
    engine = get_engine(url)
    SQLModel.metadata.create_all(engine)
    return engine


def _postgres_database(server: str) -> str:
    name = f"{_POSTGRES_PREFIX}{next(_postgres_databases)}"
    # AUTOCOMMIT: CREATE/DROP DATABASE refuse to run inside a transaction.
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return make_url(server).set(database=name).render_as_string(hide_password=False)


@dataclass(frozen=True)
class Crm:
    contact_ids: list[int]
    selection_id: int  # every seeded contact is a member
    target_selection_id: int  # empty: list steps add to it and remove from it
    project_id: int


def seed_contacts(engine: Engine, count: int, batch: int = 5000) -> Crm:
    """`count` contacts that may receive marketing email, in one selection; bulk inserts."""
    tables = SQLModel.metadata.tables
    contacts, selections = tables["contacts"], tables["selections"]
    members, projects = tables["selection_members"], tables["projects"]
    now = datetime.now(UTC)
    consent = {"purpose": "emarketing", "legal_basis": "consent", "source": "bench", "comment": ""}
    with engine.begin() as db:
        first = db.execute(select(contacts.c.id).order_by(contacts.c.id.desc()).limit(1)).scalar()
        start = (first or 0) + 1
        for offset in range(0, count, batch):
            rows: list[dict[str, Any]] = [
                {
                    "id": start + i,
                    "first_name": f"Bench{start + i}",
                    "last_name": "Contact",
                    "email": f"contact{start + i}@bench.example.org",
                    "emails": [],
                    "phones": [],
                    "no_mailings": False,
                    "retired": False,
                    "interests": [],
                    "subscriptions": ["newsletter"],
                    "consents": [consent],
                    "user_defined": {},
                    "extra_fields": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(offset, min(offset + batch, count))
            ]
            db.execute(insert(contacts), rows)
        ids = list(range(start, start + count))
        selection_id = db.execute(
            insert(selections).values(name="Bench contacts")
        ).inserted_primary_key
        target_id = db.execute(insert(selections).values(name="Bench target")).inserted_primary_key
        project_id = db.execute(insert(projects).values(name="Bench project")).inserted_primary_key
        assert selection_id is not None and target_id is not None and project_id is not None
        for offset in range(0, count, batch):
            db.execute(
                insert(members),
                [
                    {"selection_id": selection_id[0], "contact_id": c}
                    for c in ids[offset : offset + batch]
                ],
            )
    return Crm(ids, int(selection_id[0]), int(target_id[0]), int(project_id[0]))


@dataclass(frozen=True)
class Stack:
    """A fresh dev server, and a fresh database of seeded contacts in a scratch directory."""

    server: Server
    engine: Engine
    contact_ids: list[int]
    directory: Path


@asynccontextmanager
async def seeded_stack(workdir: Path, count: int, label: str) -> AsyncIterator[Stack]:
    """``count`` contacts in a database of their own and a dev server of its own, for one round
    whose engine and baseline share the server."""
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        try:
            progress(f"{label}: seeding {count:,} contacts")
            crm = seed_contacts(engine, count)
            async with dev_server() as server:
                yield Stack(server, engine, crm.contact_ids, directory)
        finally:
            engine.dispose()


def deploy(engine: Engine, document: dict[str, Any]) -> None:
    deploy_flow(engine, document)


# --- workers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tuning:
    """Worker settings to compare; None keeps worker.py's value (or the SDK's, where worker.py
    sets none). ``name="default"`` builds the worker exactly as worker.py does."""

    name: str = "default"
    max_concurrent_activities: int | None = None
    max_cached_workflows: int | None = None
    pollers: int | None = None  # workflow-task and activity-task pollers, each

    def describe(self) -> str:
        parts = [
            f"{label}={value}"
            for label, value in (
                ("max_concurrent_activities", self.max_concurrent_activities),
                ("max_cached_workflows", self.max_cached_workflows),
                ("pollers", self.pollers),
            )
            if value is not None
        ]
        return ", ".join(parts) or "worker.py as it is"


DEFAULT_TUNING = Tuning()
WORKER_PY_ACTIVITY_SLOTS = worker_module.ACTIVITY_SLOTS  # build_worker's activity slots and threads
# The plain workflows' activities are async: their slots only bound how many run at once. They
# keep the 32 the engine's worker had before its threads became a setting (ACTIVITY_THREADS).
BASELINE_ACTIVITY_SLOTS = 32


def worker_py_options(
    client: Client,
    engine: Engine,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    executor: ThreadPoolExecutor,
) -> dict[str, Any]:
    """The arguments worker.build_worker gives ``Worker``, captured without building one, so a
    tuned worker differs from worker.py's in the tuned settings only."""
    captured: dict[str, Any] = {}

    def capture(worker_client: Client, **options: Any) -> Any:
        if not captured:  # the participants' worker; the channels' come after it
            captured.update(options, client=worker_client)
        return mock.MagicMock()

    with mock.patch.object(worker_module, "Worker", capture):
        worker_module.build_worker(
            client, engine, task_queue=task_queue, activities=activities, executor=executor
        )
    if not captured:
        raise RuntimeError("worker.build_worker no longer calls Worker(...): update bench")
    return captured


@asynccontextmanager
async def participant_worker(
    client: Client,
    engine: Engine,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    tuning: Tuning = DEFAULT_TUNING,
) -> AsyncIterator[EngineWorker]:
    """The engine's worker as worker.build_worker makes it, or with the tuning's settings (of
    the participants' worker; the channels' workers as worker.py has them)."""
    slots = tuning.max_concurrent_activities or WORKER_PY_ACTIVITY_SLOTS
    executor = ThreadPoolExecutor(max_workers=slots)
    if tuning == DEFAULT_TUNING:
        worker = new_worker(
            client, engine, task_queue=task_queue, activities=activities, executor=executor
        )
    else:
        options = worker_py_options(client, engine, task_queue, activities, executor)
        if tuning.max_concurrent_activities is not None:
            options["max_concurrent_activities"] = tuning.max_concurrent_activities
        if tuning.max_cached_workflows is not None:
            options["max_cached_workflows"] = tuning.max_cached_workflows
        if tuning.pollers is not None:
            options["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(tuning.pollers)
            options["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(tuning.pollers)
        sends = ThreadPoolExecutor(max_workers=worker_module.CHANNEL_ACTIVITY_SLOTS)
        channels = worker_module.channel_workers(
            client, task_queue, activities, NO_SENDING_SETTINGS, sends
        )
        worker = EngineWorker(Worker(**options), channels, sends)
    try:
        async with worker:
            yield worker
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# For flows without SMS steps: settings that are never used (and keep the environment out).
UNUSED_TWILIO = TwilioSettings(
    account_sid=TWILIO_SID, auth_token=SecretStr(TWILIO_TOKEN), api_base=f"http://{LOOPBACK}:9"
)


def engine_activities(
    engine: Engine, smtp: SmtpSettings, twilio: TwilioSettings | None = None
) -> list[Callable[..., Any]]:
    return activities_for(engine, smtp, twilio or UNUSED_TWILIO)


# --- waiting, bounded ----------------------------------------------------------------------------


async def bounded(awaitable: Awaitable[Any], what: str, timeout: timedelta = RUN_TIMEOUT) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout.total_seconds())
    except TimeoutError:
        raise BenchTimeout(f"{what}: not done after {timeout}") from None


RESULT_WAITERS = int(os.environ.get("BENCH_RESULT_WAITERS", "8"))


async def until(check: Callable[[], Awaitable[bool]], what: str, interval: float = 0.5) -> None:
    """Until ``check()`` holds, bounded by RUN_TIMEOUT."""
    try:
        await assert_eventually(
            check, timeout=RUN_TIMEOUT.total_seconds(), interval=interval, what=what
        )
    except AssertionError:
        raise BenchTimeout(f"{what}: not done after {RUN_TIMEOUT}") from None


QUIET_WINDOW = 1.0  # seconds
QUIET_CORES = 0.05  # server CPU below this over the window: nothing left to do


async def quiet(server: Server) -> None:
    """Until the server has been (nearly) idle for a second: the last workflow tasks are done."""
    deadline = time.monotonic() + RUN_TIMEOUT.total_seconds()
    while time.monotonic() < deadline:
        with server.meter.section() as usage:
            await asyncio.sleep(QUIET_WINDOW)
        if usage().server_cores < QUIET_CORES:
            return
    raise BenchTimeout(f"the server did not go quiet within {RUN_TIMEOUT}")


async def results_of(client: Client, workflow_ids: Iterable[str]) -> None:
    """Wait until every workflow closed, bounded by RUN_TIMEOUT.

    A few long polls at a time, in start order: hundreds at once would share the client's one
    connection with the worker's own polls and slow the very workflows being waited for.
    """
    handles: list[WorkflowHandle[Any, Any]] = [client.get_workflow_handle(i) for i in workflow_ids]
    jobs = [handle.result for handle in handles]
    await bounded(gather_limited(RESULT_WAITERS, jobs), "waiting for results")


async def gather_limited(limit: int, jobs: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


# --- results -------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class Row:
    """One figure: its value in every round for the engine and (optionally) the baseline."""

    metric: str
    unit: str
    engine: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def engine_median(self) -> float:
        return median(self.engine)

    @property
    def baseline_median(self) -> float | None:
        return median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        if base is None or base == 0 or not self.engine:
            return None
        return self.engine_median / base

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "engine": self.engine,
            "baseline": self.baseline,
            "engine_median": self.engine_median,
            "baseline_median": self.baseline_median,
            "ratio": self.ratio,
            "note": self.note,
        }


@dataclass
class PartResult:
    part: str
    title: str
    engine_label: str
    baseline_label: str
    parameters: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    failed: str | None = None

    def row(self, metric: str, unit: str, note: str = "") -> Row:
        for existing in self.rows:
            if existing.metric == metric:
                return existing
        created = Row(metric, unit, note=note)
        self.rows.append(created)
        return created

    def add_usage(self, side: str, usage: Usage, count: int | None = None, what: str = "") -> None:
        """CPU of the server and of this Python process during a timed section, in cores, and
        (given a count) in CPU milliseconds per unit of work: a figure that other load on the
        machine disturbs far less than rates do."""
        figures: list[tuple[str, str, float]] = [
            ("server CPU", "cores of 2", usage.server_cores),
            ("Python CPU (worker, client, peers)", "cores of 2", usage.python_cores),
        ]
        if count:
            figures += [
                (f"server CPU per {what}", "CPU ms", usage.server_cpu * 1000 / count),
                (f"Python CPU per {what}", "CPU ms", usage.python_cpu * 1000 / count),
            ]
            figures += [
                (f"  of which {kind}", "CPU ms", seconds * 1000 / count)
                for kind, seconds in usage.python_threads.items()
            ]
            if os.environ.get(POSTGRES_SERVER):
                per = usage.database_cpu * 1000 / count
                figures.append((f"PostgreSQL CPU per {what}", "CPU ms", per))
        figures += [
            ("workflow tasks over 5 s", "SDK warnings", float(usage.slow_tasks)),
            ("workflow tasks timed out (10 s)", "SDK warnings", float(usage.lost_tasks)),
            ("other processes' CPU (noise)", "cores of 2", usage.other_cores),
        ]
        for metric, unit, value in figures:
            getattr(self.row(metric, unit), side).append(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "title": self.title,
            "engine": self.engine_label,
            "baseline": self.baseline_label,
            "parameters": self.parameters,
            "rows": [row.to_json() for row in self.rows],
            "notes": self.notes,
            "wall_seconds": self.wall_seconds,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class Options:
    rounds: int
    participants: int | None  # overrides each throughput part's default N
    enroll_count: int
    parked_count: int
    tunings: list[Tuning]
    workdir: Path


def alternate(round_index: int) -> tuple[str, str]:
    """Engine first in even rounds, baseline first in odd ones: neither always runs warm."""
    return ("engine", "baseline") if round_index % 2 == 0 else ("baseline", "engine")


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- one timed round -----------------------------------------------------------------------------


async def enroll_and_finish(
    server: Server,
    engine: Engine,
    contact_ids: list[int],
    document: dict[str, Any],
    activities: Sequence[Callable[..., Any]],
    tuning: Tuning = DEFAULT_TUNING,
) -> tuple[Usage, int]:
    """Deploy the flow, start a worker, then time enrollment until every participant closed.
    Returns the usage and how many were enrolled."""
    flow_id = str(document["id"])
    deploy(engine, document)
    task_queue = f"bench-{flow_id}"
    async with participant_worker(server.client, engine, task_queue, activities, tuning):
        with server.meter.section() as usage:
            report = await bounded(
                enroll(server.client, engine, flow_id, contact_ids, task_queue=task_queue),
                "enrolling",
            )
            await results_of(
                server.client, (participant_workflow_id(flow_id, c) for c in report.enrolled)
            )
    return usage(), len(report.enrolled)


async def baseline_runs(server: Server, count: int, plan: BaselinePlan, prefix: str) -> Usage:
    """`count` baseline workflows started by a plain concurrent loop (as many in flight as
    enrollment allows), timed until every one closed."""
    task_queue = f"bench-{prefix}"
    ids = [f"{prefix}-{index}" for index in range(count)]
    client = server.client

    def starter(workflow_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: client.start_workflow(
            BaselineWorkflow.run, plan, id=workflow_id, task_queue=task_queue
        )

    async with baseline_worker(client, task_queue, BASELINE_ACTIVITY_SLOTS):
        with server.meter.section() as usage:
            await bounded(gather_limited(START_CONCURRENCY, map(starter, ids)), "starting")
            await results_of(client, ids)
    return usage()
