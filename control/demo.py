"""The dev stack's demo: the example flows deployed and the demo selection enrolled in each.

Two flows, so that ``make run`` shows something at any hour: ``hello`` sends its email as soon as
a contact is enrolled (no sending window), while ``welcome`` keeps its working-day window and
waits for 08:00 at night or at the weekend.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from temporalio.client import Client

from control.enrollment import EnrollmentReport, enroll, selection_members
from control.flows import FlowRejected, StoredFlow, deploy_flow, load_flow, read_document
from models.database import PROJECT_ROOT
from models.demo import DEMO_SELECTION_ID

DEMO_FLOWS = (PROJECT_ROOT / "flows" / "welcome.json", PROJECT_ROOT / "flows" / "hello.json")


@dataclass(frozen=True)
class DemoFlow:
    stored: StoredFlow
    report: EnrollmentReport
    not_deployed: str | None  # why this run kept the version deployed earlier


async def start_demo(client: Client, engine: Engine, task_queue: str) -> list[DemoFlow]:
    """Deploy each demo flow (an unchanged one stays as it is) and enroll the demo selection;
    contacts still active in a flow from an earlier run are refused with that reason."""
    started = []
    for path in DEMO_FLOWS:
        document = read_document(path)
        problem = None
        try:
            deploy_flow(engine, document)
        except FlowRejected as refused:  # e.g. edited while running: keep the deployed version
            problem = str(refused).splitlines()[0]
        stored = load_flow(engine, str(document["id"]))
        contacts = selection_members(engine, DEMO_SELECTION_ID)
        report = await enroll(client, engine, stored.flow.id, contacts, task_queue=task_queue)
        started.append(DemoFlow(stored, report, problem))
    return started
