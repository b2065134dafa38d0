"""Throughput (issue 7): participants through five action steps against plain Temporal workflows.

Engine: N contacts enrolled in ``add_to_list (selection) → add_to_list (project) → send_email →
remove_from_list (selection) → remove_from_list (project) → finish``, timed from the first start
request until every participant closed. Baseline, on the same dev server: N workflows of
``bench.baseline`` running five no-op activities each, started by a plain concurrent loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.baseline import BaselinePlan
from bench.harness import (
    EMAIL_SETTINGS,
    Crm,
    Options,
    PartResult,
    Usage,
    alternate,
    baseline_runs,
    dev_server,
    engine_activities,
    enroll_and_finish,
    progress,
    seed_contacts,
    smtp_inbox,
    temp_database,
)

NAME = "throughput"
TITLE = "Throughput: five action steps (issue 7)"
DEFAULT_PARTICIPANTS = 200
ACTION_STEPS = 5


def five_step_flow(flow_id: str, crm: Crm) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": "Bench: five action steps",
        "email": EMAIL_SETTINGS,
        "start": "add-selection",
        "steps": [
            {
                "id": "add-selection",
                "type": "add_to_list",
                "selection_id": crm.target_selection_id,
                "next": "add-project",
            },
            {
                "id": "add-project",
                "type": "add_to_list",
                "project_id": crm.project_id,
                "next": "mail",
            },
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Hello [[customer.firstname]]",
                "text": "Hi [[customer.firstname]],\n\nFive steps, one email.",
                "next": "remove-selection",
            },
            {
                "id": "remove-selection",
                "type": "remove_from_list",
                "selection_id": crm.target_selection_id,
                "next": "remove-project",
            },
            {
                "id": "remove-project",
                "type": "remove_from_list",
                "project_id": crm.project_id,
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }


def record(result: PartResult, side: str, usage: Usage, finished: int) -> None:
    getattr(result.row("participants/s", "participants/s"), side).append(finished / usage.wall)
    getattr(result.row("steps/s", "action steps/s"), side).append(
        finished * ACTION_STEPS / usage.wall
    )
    result.add_usage(side, usage, finished * ACTION_STEPS, "action step")


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_PARTICIPANTS
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"{count} participants through 5 action steps (4 CRM list steps, 1 email)",
        baseline_label=f"{count} plain workflows of 5 no-op activities each",
        parameters={"participants": count, "rounds": options.rounds},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        crm = seed_contacts(engine, count)
        with smtp_inbox(directory) as inbox:
            activities = engine_activities(engine, inbox.settings)
            async with dev_server() as server:
                for index in range(options.rounds):
                    for side in alternate(index):
                        progress(f"throughput round {index + 1}/{options.rounds}: {side}")
                        if side == "engine":
                            flow = five_step_flow(f"bench-steps-{index}", crm)
                            usage, finished = await enroll_and_finish(
                                server, engine, crm.contact_ids, flow, activities
                            )
                        else:
                            plan = BaselinePlan(activities=ACTION_STEPS)
                            usage = await baseline_runs(server, count, plan, f"base-{index}")
                            finished = count
                        record(result, side, usage, finished)
        engine.dispose()
    return result
