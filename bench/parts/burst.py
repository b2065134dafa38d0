"""A campaign's burst under overload: N contacts enrolled at once into ``send_email → finish``
against ``python worker.py`` (a process of its own, at its defaults), while a CPU burner started
here spins on one core.

Engine, two variants per round, each on a fresh SQLite file, a fresh inbox and a fresh worker
process: the plain burst, and the same burst with the database's write lock held for 25 s by
another connection (``BEGIN IMMEDIATE``) once a fifth of the mail is out. The clock runs from the
first start request until every participant workflow has closed. What is counted comes from the
peers and the worker itself: messages in the Maildir (and recipients with none or more than one),
the worker log's TMPRL1104 lines (workflow tasks over 5 s) and "Task not found when completing"
lines (workflow tasks the server had timed out), participants Finished, ledger statuses.

Baseline, under the same burner and on the same server: N plain workflows that each send the same
message in one activity (``bench.baseline.PlainEmailWorkflow``, a worker in this process), so the
ratio shows what overload costs each.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select

from bench.harness import (
    CORE_WARNINGS,
    SLOW_TASK,
    TASK_NOT_FOUND,
    Options,
    PartResult,
    Server,
    bounded,
    cpu_seconds,
    dev_server,
    machine_busy_seconds,
    process_tree,
    progress,
    results_of,
    seed_contacts,
    smtp_inbox,
    temp_database,
)
from bench.parts.email import PLAIN, email_flow, plain_round
from bench.processes import overload, running_workers, worker_cpu_seconds
from control.enrollment import enroll
from control.flows import deploy_flow
from models.database import get_engine, migrate, session
from models.engine import Delivery, Participant, ParticipantStatus
from models.participant import participant_workflow_id
from testkit.faults import hold_write_lock
from testkit.peers import Inbox
from testkit.processes import cpu_burner, worker_environment
from testkit.servers import LOOPBACK

UNREACHABLE_SMS = f"http://{LOOPBACK}:9"  # discard port: nothing answers there

NAME = "burst"
TITLE = "Burst under load (worker.py process, one core burned)"
DEFAULT_PARTICIPANTS = 2000
LOCK_SECONDS = 25.0
LOCKED = f"write lock held {LOCK_SECONDS:.0f} s"


def statuses(engine: Engine) -> Counter[str]:
    with session(engine) as db:
        return Counter(db.exec(select(Participant.status)).all())


def ledger(engine: Engine) -> Counter[str]:
    with session(engine) as db:
        return Counter(db.exec(select(Delivery.status)).all())


def recipients(inbox: Inbox) -> Counter[str]:
    """Messages stored by the SMTP server, per To address."""
    return Counter(
        message.recipients.rsplit("<", 1)[-1].rstrip(">").strip().lower()
        for message in inbox.messages()
    )


def server_cpu_seconds(server: Server) -> float:
    if server.pid is None:
        return 0.0
    return sum(cpu_seconds(pid) for pid in process_tree(server.pid))


async def _lock_midway(
    inbox: Inbox, engine: Engine, count: int, held: threading.Event
) -> threading.Thread:
    """Once a fifth of the mail is out, take the write lock for LOCK_SECONDS in a thread."""
    while inbox.count() < count // 5:
        await asyncio.sleep(0.1)
    locker = threading.Thread(
        target=hold_write_lock, args=(engine, LOCK_SECONDS, held), daemon=True
    )
    locker.start()
    return locker


@dataclass(frozen=True)
class Burst:
    """What one burst against worker processes did, counted at the peers and in the logs."""

    count: int
    wall: float
    server_cpu: float
    worker_cpu: float  # every worker process together
    burner_cpu: float
    machine_cpu: float
    slow_tasks: int  # TMPRL1104 lines in the workers' logs
    timed_out_tasks: int  # "Task not found when completing" lines
    stored: Counter[str]  # messages at the SMTP server, per recipient
    missing: int  # contacts with no message
    participants: Counter[str]  # by status
    deliveries: Counter[str]  # ledger rows by status
    lock_taken: bool

    @property
    def delivered(self) -> int:
        return self.stored.total()

    @property
    def duplicated(self) -> int:
        return sum(1 for n in self.stored.values() if n > 1)

    @property
    def noise(self) -> float:
        """Cores that processes other than the server, workers and burner took meanwhile."""
        other = self.machine_cpu - self.server_cpu - self.worker_cpu - self.burner_cpu
        return max(other, 0.0) / self.wall


async def worker_burst(
    server: Server,
    directory: Path,
    count: int,
    *,
    workers: int = 1,
    burner: int | None = None,
    locked: bool = False,
) -> Burst:
    """``count`` contacts, on a fresh SQLite file and inbox, enrolled at once into the one-email
    flow served by ``workers`` ``python worker.py`` processes on one task queue; timed from the
    first start request until every participant workflow closed."""
    directory.mkdir()
    # Migrated, not created from the models: worker.py migrates on start and needs the revision.
    engine = get_engine(f"sqlite:///{directory / 'bench.db'}")
    migrate(engine)
    crm = seed_contacts(engine, count)
    flow_id = f"bench-{directory.name}"
    deploy_flow(engine, email_flow(flow_id))
    task_queue = f"bench-{flow_id}"
    address = server.client.service_client.config.target_host
    held = threading.Event()
    locker: threading.Thread | None = None
    with smtp_inbox(directory) as inbox:
        # The SMS API is never reached: the flow has no SMS step.
        database_url = f"sqlite:///{directory / 'bench.db'}"
        settings = worker_environment(address, task_queue, database_url, inbox, UNREACHABLE_SMS)
        with running_workers(settings, directory, workers) as processes:
            for process in processes:
                await process.polling()

            def readings() -> tuple[float, float, float, float]:
                return (
                    machine_busy_seconds(),
                    server_cpu_seconds(server),
                    sum(worker_cpu_seconds(process) for process in processes),
                    cpu_seconds(burner) if burner is not None else 0.0,
                )

            started, before = time.perf_counter(), readings()
            watcher = (
                asyncio.create_task(_lock_midway(inbox, engine, count, held)) if locked else None
            )
            try:
                report = await bounded(
                    enroll(server.client, engine, flow_id, crm.contact_ids, task_queue=task_queue),
                    "enrolling",
                )
                if watcher is not None:
                    locker = await bounded(watcher, "waiting for a fifth of the mail")
                await results_of(
                    server.client,
                    (participant_workflow_id(flow_id, c) for c in report.enrolled),
                )
            finally:
                if watcher is not None:
                    watcher.cancel()
            wall = time.perf_counter() - started
            after = readings()
        if locker is not None:
            await bounded(asyncio.to_thread(locker.join), "releasing the write lock")
        overloaded = [overload(process) for process in processes]
        stored = recipients(inbox)
    participants = await asyncio.to_thread(statuses, engine)
    deliveries = await asyncio.to_thread(ledger, engine)
    engine.dispose()
    expected = {f"contact{c}@bench.example.org" for c in crm.contact_ids}
    machine, server_cpu, worker_cpu, burned = (a - b for a, b in zip(after, before, strict=True))
    return Burst(
        count=count,
        wall=wall,
        server_cpu=server_cpu,
        worker_cpu=worker_cpu,
        burner_cpu=burned,
        machine_cpu=machine,
        slow_tasks=sum(slow for slow, _ in overloaded),
        timed_out_tasks=sum(lost for _, lost in overloaded),
        stored=stored,
        missing=len(expected - set(stored)),
        participants=participants,
        deliveries=deliveries,
        lock_taken=held.is_set(),
    )


async def engine_round(
    server: Server, directory: Path, count: int, burner: int, result: PartResult, *, locked: bool
) -> None:
    burst = await worker_burst(server, directory, count, burner=burner, locked=locked)
    suffix = f", {LOCKED}" if locked else ""
    delivered = max(burst.delivered, 1)
    figures: list[tuple[str, str, float]] = [
        (f"wall time{suffix}", "s", burst.wall),
        (f"messages/s{suffix}", "msg/s", burst.delivered / burst.wall),
        (f"workflow tasks over 5 s{suffix}", "worker log", float(burst.slow_tasks)),
        (f"workflow tasks timed out (10 s){suffix}", "worker log", float(burst.timed_out_tasks)),
        (f"messages at the peer{suffix}", f"of {count}", float(burst.delivered)),
        (f"recipients with no message{suffix}", "contacts", float(burst.missing)),
        (f"recipients with more than one{suffix}", "contacts", float(burst.duplicated)),
        (
            f"participants Finished{suffix}",
            f"of {count}",
            float(burst.participants[ParticipantStatus.finished.value]),
        ),
        (f"ledger rows sent{suffix}", f"of {count}", float(burst.deliveries["sent"])),
        (f"server CPU per message{suffix}", "CPU ms", burst.server_cpu * 1000 / delivered),
        (f"worker CPU per message{suffix}", "CPU ms", burst.worker_cpu * 1000 / delivered),
        (f"burner CPU{suffix}", "cores of 2", burst.burner_cpu / burst.wall),
        (f"other processes' CPU (noise){suffix}", "cores of 2", burst.noise),
    ]
    for metric, unit, value in figures:
        result.row(metric, unit).engine.append(value)
    lock = f"; the write lock was {'taken' if burst.lock_taken else 'NEVER taken'}"
    result.notes.append(
        f"{directory.name}: ledger {dict(burst.deliveries)}; participants "
        f"{dict(burst.participants)}" + (lock if locked else "")
    )


async def baseline_round(
    server: Server, directory: Path, count: int, burner: int, index: int, result: PartResult
) -> None:
    directory.mkdir()
    engine = temp_database(directory)
    crm = seed_contacts(engine, count)
    engine.dispose()
    with smtp_inbox(directory) as inbox:

        def readings() -> tuple[float, float, float, float]:
            own = os.times()
            return (
                machine_busy_seconds(),
                server_cpu_seconds(server),
                own.user + own.system,
                cpu_seconds(burner),
            )

        before, started = readings(), time.perf_counter()
        warned = CORE_WARNINGS.counts[SLOW_TASK], CORE_WARNINGS.counts[TASK_NOT_FOUND]
        await plain_round(server, crm, inbox, index, result, local=False)
        wall = time.perf_counter() - started
        after = readings()
        slow = CORE_WARNINGS.counts[SLOW_TASK] - warned[0]
        timed_out = CORE_WARNINGS.counts[TASK_NOT_FOUND] - warned[1]
        stored = recipients(inbox)
    machine, server_cpu, python_cpu, burned = (a - b for a, b in zip(after, before, strict=True))
    delivered = max(stored.total(), 1)
    # plain_round's own timed section gave the rate (PLAIN row); these are the peer's counts.
    expected = {f"contact{c}@bench.example.org" for c in crm.contact_ids}
    for metric, unit, value in (
        ("wall time", "s", wall),
        ("workflow tasks over 5 s", "worker log", float(slow)),
        ("workflow tasks timed out (10 s)", "worker log", float(timed_out)),
        ("messages at the peer", f"of {count}", float(stored.total())),
        ("recipients with no message", "contacts", float(len(expected - set(stored)))),
        (
            "recipients with more than one",
            "contacts",
            float(sum(1 for n in stored.values() if n > 1)),
        ),
        ("server CPU per message", "CPU ms", server_cpu * 1000 / delivered),
        # The baseline's worker runs in this process, beside the SMTP inbox: both are counted.
        ("worker CPU per message", "CPU ms", python_cpu * 1000 / delivered),
        ("burner CPU", "cores of 2", burned / wall),
        (
            "other processes' CPU (noise)",
            "cores of 2",
            max(machine - server_cpu - python_cpu - burned, 0.0) / wall,
        ),
    ):
        result.row(metric, unit).baseline.append(value)


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_PARTICIPANTS
    result = PartResult(
        NAME,
        TITLE,
        engine_label=(
            f"{count} contacts enrolled at once into send_email → finish, `python worker.py` "
            f"process at its defaults, a CPU burner on one core; again with the database's "
            f"{LOCKED} once a fifth of the mail is out"
        ),
        baseline_label=(
            f"{count} plain workflows sending the same message in one activity (worker in the "
            "bench process, its CPU counted with the SMTP inbox), same burner, same server"
        ),
        parameters={"participants": count, "rounds": options.rounds, "lock_seconds": LOCK_SECONDS},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        async with dev_server() as server:
            with cpu_burner() as burner:
                for index in range(options.rounds):
                    sides = ["engine", "locked", "baseline"]
                    if index % 2:
                        sides.reverse()
                    for side in sides:
                        progress(f"burst round {index + 1}/{options.rounds}: {side}")
                        where = directory / f"{side}-{index}"
                        if side == "baseline":
                            await baseline_round(server, where, count, burner, index, result)
                        else:
                            locked = side == "locked"
                            await engine_round(server, where, count, burner, result, locked=locked)
    # The plain workflows' rate beside each of the engine's, for the ratio.
    plain = result.row(PLAIN, "msg/s")
    result.rows = [
        row for row in result.rows if row is not plain and not row.metric.startswith("plain ")
    ]
    for metric in ("messages/s", f"messages/s, {LOCKED}"):
        result.row(metric, "msg/s").baseline = list(plain.baseline)
    return result
