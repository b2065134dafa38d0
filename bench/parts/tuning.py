"""Worker tuning: the five-step flow of the throughput part under a few worker settings.

Each setting changes one thing from worker.py's worker; the baseline column is worker.py as it is,
run in the same rounds on the same dev server (the order rotates each round).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.harness import (
    DEFAULT_TUNING,
    Options,
    PartResult,
    dev_server,
    engine_activities,
    enroll_and_finish,
    progress,
    seed_contacts,
    smtp_inbox,
    temp_database,
)
from bench.parts.throughput import ACTION_STEPS, five_step_flow

NAME = "tuning"
TITLE = "Worker tuning: five action steps under other worker settings"
DEFAULT_PARTICIPANTS = 60


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_PARTICIPANTS
    tunings = [DEFAULT_TUNING, *(t for t in options.tunings if t != DEFAULT_TUNING)]
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"{count} participants through the throughput part's flow, per setting",
        baseline_label="the same with worker.py's settings (same rounds, same server)",
        parameters={
            "participants": count,
            "rounds": options.rounds,
            "settings": "; ".join(f"{t.name}: {t.describe()}" for t in tunings),
        },
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        crm = seed_contacts(engine, count)
        with smtp_inbox(directory) as inbox:
            activities = engine_activities(engine, inbox.settings)
            async with dev_server() as server:
                for index in range(options.rounds):
                    shift = index % len(tunings)
                    for tuning in tunings[shift:] + tunings[:shift]:
                        progress(f"tuning round {index + 1}/{options.rounds}: {tuning.name}")
                        flow = five_step_flow(f"bench-tuning-{tuning.name}-{index}", crm)
                        usage, finished = await enroll_and_finish(
                            server, engine, crm.contact_ids, flow, activities, tuning
                        )
                        steps = finished * ACTION_STEPS
                        figures = (
                            ("participants/s", "participants/s", finished / usage.wall),
                            ("server CPU", "cores of 2", usage.server_cores),
                            ("Python CPU", "cores of 2", usage.python_cores),
                            ("server CPU per step", "CPU ms", usage.server_cpu * 1000 / steps),
                            ("Python CPU per step", "CPU ms", usage.python_cpu * 1000 / steps),
                            ("workflow tasks over 5 s", "SDK warnings", float(usage.slow_tasks)),
                            ("other processes' CPU (noise)", "cores of 2", usage.other_cores),
                        )
                        for metric, unit, value in figures:
                            if tuning == DEFAULT_TUNING:
                                for other in tunings[1:]:
                                    result.row(f"{other.name}: {metric}", unit).baseline.append(
                                        value
                                    )
                            else:
                                result.row(f"{tuning.name}: {metric}", unit).engine.append(value)
        engine.dispose()
    return result
