"""Scale-out: the one-email flow served by two ``python worker.py`` processes on one task queue,
against one, on the same dev server with the same N.

Each side gets a fresh SQLite file, a fresh inbox and fresh worker processes; the clock runs from
the first start request until every participant workflow has closed. The engine column is two
workers, the baseline column one, so the ratio is two/one. On a 2-core machine the server, the
workers and the SMTP inbox share the cores: CPU per message says whether a second process adds
work or only capacity.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.harness import Options, PartResult, alternate, dev_server, progress
from bench.parts.burst import worker_burst
from models.engine import ParticipantStatus

NAME = "scaleout"
TITLE = "Scale-out: two worker processes against one"
DEFAULT_PARTICIPANTS = 500


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_PARTICIPANTS
    result = PartResult(
        NAME,
        TITLE,
        engine_label=(
            f"{count} contacts through send_email → finish, two `python worker.py` processes "
            "on one task queue"
        ),
        baseline_label="the same with one `python worker.py` process",
        parameters={"participants": count, "rounds": options.rounds},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        async with dev_server() as server:
            for index in range(options.rounds):
                for side in alternate(index):
                    workers = 2 if side == "engine" else 1
                    progress(f"scaleout round {index + 1}/{options.rounds}: {workers} worker(s)")
                    where = Path(scratch) / f"workers-{workers}-{index}"
                    burst = await worker_burst(server, where, count, workers=workers)
                    delivered = max(burst.delivered, 1)
                    finished = burst.participants[ParticipantStatus.finished.value]
                    for metric, unit, value in (
                        ("messages/s", "msg/s", burst.delivered / burst.wall),
                        ("wall time", "s", burst.wall),
                        ("server CPU per message", "CPU ms", burst.server_cpu * 1000 / delivered),
                        ("worker CPU per message", "CPU ms", burst.worker_cpu * 1000 / delivered),
                        ("server CPU", "cores of 2", burst.server_cpu / burst.wall),
                        ("worker CPU (all workers)", "cores of 2", burst.worker_cpu / burst.wall),
                        ("workflow tasks over 5 s", "worker logs", float(burst.slow_tasks)),
                        (
                            "workflow tasks timed out (10 s)",
                            "worker logs",
                            float(burst.timed_out_tasks),
                        ),
                        ("messages at the peer", f"of {count}", float(burst.delivered)),
                        ("recipients with more than one", "contacts", float(burst.duplicated)),
                        ("participants Finished", f"of {count}", float(finished)),
                        ("other processes' CPU (noise)", "cores of 2", burst.noise),
                    ):
                        getattr(result.row(metric, unit), side).append(value)
                    if burst.missing or burst.duplicated or finished != count:
                        result.notes.append(
                            f"{where.name}: {burst.missing} missing, {burst.duplicated} duplicated"
                            f", ledger {dict(burst.deliveries)}, participants"
                            f" {dict(burst.participants)}"
                        )
    return result
