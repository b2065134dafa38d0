"""Memory per parked workflow, each side in a fresh process with a fresh dev server.

The waiting part reads both sides' memory in one process and on one server, one side after the
other, so the second side's figures start from what the first one's freed but the allocators
kept. Here every round of each side is a process of its own (``python -m bench.parts.memory
engine|baseline N DIR``) with a dev server of its own and a worker whose cache holds every
workflow: it runs one workflow to the end of its first workflow task (imports, first-use caches),
reads its own VmRSS and the server's, parks N more, waits until the server is quiet, collects
garbage and reads both again. Engine: participants in ``wait_time (30 days) → finish``, enrolled
as the product enrolls them, parked once each has recorded its wait. Baseline: plain workflows
parked in a 30-day timer (the waiting part's baseline), on a plain worker with the same cache.

Two more sides say what the figure is made of. ``commands``: plain workflows that do what a
participant does before it parks, with nothing of the engine (the participant's five search
attributes at the start, an input of its enrollment's size, one local activity for its record,
then the timer): the SDK's own cost of those commands. And each of engine and baseline again with
a cache of ten, so that the growth that is not the cache (the client, the database, the
enrollment) can be taken off: what is left is what a cached workflow costs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.baseline import BaselinePlan, BaselineWorkflow, baseline_worker
from bench.harness import (
    BASELINE_ACTIVITY_SLOTS,
    RUN_TIMEOUT,
    Options,
    PartResult,
    Server,
    Tuning,
    alternate,
    bounded,
    deploy,
    dev_server,
    engine_activities,
    gather_limited,
    participant_worker,
    progress,
    quiet,
    seed_contacts,
    smtp_inbox,
    temp_database,
    until,
)
from bench.parts.waiting import PARK_DAYS, count_parked, memory_mib, wait_flow
from bench.report import PROJECT_ROOT
from control.enrollment import START_CONCURRENCY, enroll
from models.flow import Flow
from models.search_attributes import at_start

NAME = "memory"
TITLE = "Memory per parked workflow, each side in a fresh process"
DEFAULT_COUNT = 1_000
KIB = 1024
FLOW_ID = "bench-memory"  # the engine side's flow, whose attributes the commands side starts with
UNCACHED = 10  # the cache of the runs that measure the growth that is not the cache ("ten")
# A participant parked in the wait flow, measured: its input 0.9 KB, its record's marker 0.4 KB.
RECORD = "r" * 400
BALLAST = "b" * 400
# RSS of the worker (this process) and of the server, in MiB, before and after parking.
Readings = tuple[tuple[float, float], tuple[float, float]]


async def _engine(server: Server, count: int, directory: Path, cache: int) -> Readings:
    engine = temp_database(directory)
    crm = seed_contacts(engine, count + 1)
    flow_id, task_queue = FLOW_ID, "bench-memory"
    deploy(engine, wait_flow(flow_id))
    tuning = Tuning(name=f"cache {cache}", max_cached_workflows=cache)
    with smtp_inbox(directory) as inbox:
        activities = engine_activities(engine, inbox.settings)
        async with participant_worker(server.client, engine, task_queue, activities, tuning):
            first, rest = crm.contact_ids[:1], crm.contact_ids[1:]

            async def parked(expected: int) -> bool:
                return await asyncio.to_thread(count_parked, engine, flow_id) >= expected

            await enroll(server.client, engine, flow_id, first, task_queue=task_queue)
            await until(lambda: parked(1), "parking the first participant")
            await quiet(server)
            before = memory_mib(server)
            await bounded(
                enroll(server.client, engine, flow_id, rest, task_queue=task_queue), "enrolling"
            )
            await until(lambda: parked(count + 1), "parking participants")
            await quiet(server)
            after = memory_mib(server)
    engine.dispose()
    return before, after


async def _baseline(server: Server, count: int, cache: int, commands: bool) -> Readings:
    client, task_queue = server.client, "bench-memory-baseline"
    plan = BaselinePlan(activities=0, sleeps=1, sleep_seconds=PARK_DAYS * 86400)
    if commands:
        plan = replace(plan, record=RECORD, ballast=BALLAST)
    # The participants' flow, for their attributes (as enrollment sets them) when it runs their
    # commands.
    flow = Flow.model_validate(wait_flow(FLOW_ID)) if commands else None

    def starter(index: int) -> Callable[[], Awaitable[Any]]:
        attributes = at_start(flow, 1, index + 1) if flow is not None else None
        return lambda: client.start_workflow(
            BaselineWorkflow.run,
            plan,
            id=f"bench-memory-{index}",
            task_queue=task_queue,
            search_attributes=attributes,
        )

    async with baseline_worker(
        client, task_queue, BASELINE_ACTIVITY_SLOTS, max_cached_workflows=cache
    ):
        await starter(count)()
        await quiet(server)
        before = memory_mib(server)
        await bounded(gather_limited(START_CONCURRENCY, map(starter, range(count))), "starting")
        await quiet(server)
        after = memory_mib(server)
    return before, after


async def measure(side: str, count: int, directory: Path, cache: int) -> dict[str, float]:
    """One side's readings in this process: KiB per parked workflow, worker and server."""
    async with dev_server() as server:
        if side == "engine":
            readings = await _engine(server, count, directory, cache)
        else:
            readings = await _baseline(server, count, cache, commands=side == "commands")
    (worker_before, server_before), (worker_after, server_after) = readings
    return {
        "worker_before": worker_before,
        "worker_after": worker_after,
        "worker_per": (worker_after - worker_before) * KIB / count,
        "server_before": server_before,
        "server_after": server_after,
        "server_per": (server_after - server_before) * KIB / count,
    }


def _in_fresh_process(side: str, count: int, directory: Path, cache: int) -> dict[str, float]:
    directory.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.parts.memory", side, str(count), str(directory), str(cache)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT.total_seconds(),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{done.stderr[-4000:]}")
    readings: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return readings


async def _side(side: str, count: int, directory: Path, cache: int, label: str) -> dict[str, float]:
    progress(f"{label}, cache {cache}")
    return await asyncio.to_thread(_in_fresh_process, side, count, directory, cache)


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_COUNT
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"{count:,} participants parked in a {PARK_DAYS}-day wait step",
        baseline_label=(
            f"{count:,} plain workflows parked in a {PARK_DAYS}-day timer; the same with the "
            "participant's commands before it (its search attributes, input size, one local "
            "activity for its record)"
        ),
        parameters={"parked": count, "rounds": options.rounds, "uncached": UNCACHED},
    )
    net = "worker RSS per cached workflow, less the growth with a cache of ten"
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        for index in range(options.rounds):
            order = [*alternate(index), "commands"]
            per_cached: dict[str, float] = {}
            for side in order if index % 2 == 0 else order[::-1]:
                label = f"memory round {index + 1}/{options.rounds}: {side}"
                cached, uncached = [
                    await _side(
                        side, count, Path(scratch) / f"{side}-{cache}-{index}", cache, label
                    )
                    for cache in (count + 100, UNCACHED)
                ]
                per_cached[side] = cached["worker_per"] - uncached["worker_per"]
                if side == "commands":
                    continue
                for metric, unit, key, readings in (
                    ("worker RSS per cached workflow", "KiB", "worker_per", cached),
                    (
                        "worker RSS growth per workflow with a cache of ten (not the cache)",
                        "KiB",
                        "worker_per",
                        uncached,
                    ),
                    ("server RSS per parked workflow", "KiB", "server_per", cached),
                    ("worker RSS before (one workflow run)", "MiB", "worker_before", cached),
                    ("worker RSS with all parked", "MiB", "worker_after", cached),
                    ("server RSS before", "MiB", "server_before", cached),
                    ("server RSS with all parked", "MiB", "server_after", cached),
                ):
                    getattr(result.row(metric, unit), side).append(readings[key])
            result.row(net, "KiB").engine.append(per_cached["engine"])
            result.row(net, "KiB").baseline.append(per_cached["baseline"])
            against = f"{net}: against plain workflows with the participant's commands"
            result.row(against, "KiB").engine.append(per_cached["engine"])
            result.row(against, "KiB").baseline.append(per_cached["commands"])
    result.notes.append(
        "Each reading is a fresh process (worker and client) with a fresh in-memory dev server, "
        "read after one workflow ran and again once every workflow is parked and the server is "
        "quiet; the worker's cache holds them all, so the worker figure is per cached workflow. "
        "Each side runs again with a cache of ten: its growth is what parking costs the "
        "process apart from the cache (the client, the database, the enrollment), and the net "
        "rows take it off, round by round."
    )
    return result


if __name__ == "__main__":
    side, count, directory = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    cache = int(sys.argv[4])
    print(json.dumps(asyncio.run(measure(side, count, directory, cache))))
