"""The flows console's pages at 10,000 participants: how long each answers, served by uvicorn on
loopback as ``python -m console`` serves it, asked by an HTTP client signed in as an admin.

The flow is the demo's welcome flow behind a 30-day hold. One participant is real (enrolled
through ``control.enrollment``, parked in the hold with a worker polling): its page asks the
workflow for its state, as a live participant's page does. The other 10,000 are rows written
directly with bulk inserts, spread over the steps and statuses, with their ledger rows (every one
sent the welcome email, the finished ones the follow-up too) and opens and clicks: the tables the
pages read. Baseline: the same server's ``/healthz``, the floor any page stands on.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, insert, select
from sqlmodel import SQLModel

from activities.email import SmtpSettings
from bench.harness import (
    EMAIL_SETTINGS,
    Options,
    PartResult,
    bounded,
    deploy,
    dev_server,
    engine_activities,
    median,
    participant_worker,
    progress,
    seed_contacts,
    temp_database,
    until,
)
from console.app import create_app
from console.web import ConsoleSettings
from control.enrollment import enroll
from control.flows import read_document
from control.lifecycle import run_flow
from models.accounts import Role, add_user
from models.database import PROJECT_ROOT, session
from models.engine import ParticipantStatus
from models.participant import participant_workflow_id
from testkit.servers import LOOPBACK, free_port
from tracking.server import serving

NAME = "console"
TITLE = "Console: page response times at 10,000 participants"
PARTICIPANTS = 10_000
REQUESTS = 15  # per page and round, after one unmeasured request
GOAL_MS = 300.0
FLOW_ID = "bench-console"
TASK_QUEUE = "bench-console"
PASSWORD = "bench console password"
ACTIVE_STEPS = ("hold", "settle-in", "nurture-wait", "follow-up-email")


def console_flow() -> dict[str, Any]:
    """The welcome flow, with a hold first so the real participant parks before any send."""
    document = read_document(PROJECT_ROOT / "flows" / "welcome.json")
    hold = {"id": "hold", "type": "wait_time", "amount": 30, "unit": "days"}
    hold["next"] = document["start"]
    document.update(
        id=FLOW_ID, name="Bench: the console's flow", start="hold", email=EMAIL_SETTINGS
    )
    document["steps"] = [hold, *document["steps"]]
    return document


def _participant_rows(contact_ids: list[int], now: datetime) -> Iterator[dict[str, Any]]:
    """Six in ten active at some step, three finished, the rest with success or dropped out."""
    pick = random.Random(7)
    for contact_id in contact_ids:
        enrolled = now - timedelta(minutes=pick.randrange(60 * 24 * 60))
        draw = pick.random()
        row: dict[str, Any] = {
            "id": str(uuid.UUID(int=pick.getrandbits(128), version=4)),
            "workflow_id": participant_workflow_id(FLOW_ID, contact_id),
            "flow_id": FLOW_ID,
            "flow_version": 1,
            "contact_id": contact_id,
            "status": ParticipantStatus.active.value,
            "current_step": pick.choice(ACTIVE_STEPS),
            "wait_until": None,
            "drop_out_reason": None,
            "enrolled_at": enrolled,
            "finished_at": None,
            "updated_at": enrolled,
        }
        if draw >= 0.6:
            finished = enrolled + timedelta(days=4)
            row.update(finished_at=finished, updated_at=finished, current_step="done")
            if draw < 0.9:
                row["status"] = ParticipantStatus.finished.value
            elif draw < 0.95:
                row["status"] = ParticipantStatus.finished_with_success.value
            else:
                row.update(
                    status=ParticipantStatus.dropped_out.value,
                    current_step="follow-up-email",
                    drop_out_reason="unsubscribed",
                )
        yield row


def seed_participants(engine: Engine, contact_ids: list[int]) -> None:
    """Participants, their ledger rows and their opens and clicks: bulk inserts."""
    tables = SQLModel.metadata.tables
    now = datetime.now(UTC)
    rows = list(_participant_rows(contact_ids, now))
    deliveries: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for row in rows:
        if row["current_step"] == "hold":
            continue
        sent = ["welcome-email"] + (["follow-up-email"] if row["finished_at"] else [])
        for step in sent:
            deliveries.append(
                {
                    "key": f"{row['id']}/{step}/1",
                    "channel": "email",
                    "recipient": f"contact{row['contact_id']}@bench.example.org",
                    "status": "sent",
                    "provider_id": f"<{uuid.uuid4()}@flows.local>",
                    "created_at": row["enrolled_at"],
                    "updated_at": row["enrolled_at"],
                }
            )
            if row["contact_id"] % 3 == 0:  # a third open, a ninth click
                for kind in ("email_opened", "link_clicked")[: 1 + (row["contact_id"] % 9 == 0)]:
                    events.append(
                        {
                            "event_id": str(uuid.uuid4()),
                            "kind": kind,
                            "contact_id": row["contact_id"],
                            "payload": {"flow_id": FLOW_ID, "step_id": step},
                            "occurred_at": row["enrolled_at"] + timedelta(hours=2),
                            "delivered_at": row["enrolled_at"] + timedelta(hours=2),
                        }
                    )
    with engine.begin() as db:
        db.execute(insert(tables["participants"]), rows)
        db.execute(insert(tables["deliveries"]), deliveries)
        db.execute(insert(tables["crm_events"]), events)


async def _sign_in(http: httpx.AsyncClient, email: str) -> None:
    page = await http.get("/login")
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = await http.post(
        "/login", data={"csrf": token, "email": email, "password": PASSWORD, "next": "/flows"}
    )
    if answer.status_code != 303:
        raise RuntimeError(f"signing in to the console: {answer.status_code}")


async def _time(http: httpx.AsyncClient, path: str) -> list[float]:
    """Milliseconds per request, each one a complete answer of 200."""
    timings = []
    for index in range(REQUESTS + 1):
        started = time.perf_counter()
        answer = await http.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path}: {answer.status_code}")
        if index:  # the first warms the caches (templates, the flow's document)
            timings.append(elapsed)
    return timings


async def run(options: Options) -> PartResult:
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"GET of each page, {PARTICIPANTS:,} participants, {REQUESTS} requests",
        baseline_label="GET /healthz on the same server",
        parameters={"participants": PARTICIPANTS, "requests": REQUESTS, "rounds": options.rounds},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        engine = temp_database(Path(scratch))
        progress(f"console: seeding {PARTICIPANTS + 1:,} contacts and {PARTICIPANTS:,} rows")
        crm = seed_contacts(engine, PARTICIPANTS + 1)
        live_contact, seeded = crm.contact_ids[0], crm.contact_ids[1:]
        deploy(engine, console_flow())
        run_flow(engine, FLOW_ID)
        seed_participants(engine, seeded)
        with session(engine) as db:
            add_user(db, "admin@bench.example.org", PASSWORD, Role.admin)
        participants = SQLModel.metadata.tables["participants"]
        with engine.connect() as connection:
            finished = connection.execute(
                select(participants.c.id)
                .where(participants.c.status == ParticipantStatus.finished.value)
                .limit(1)
            ).scalar_one()
        async with dev_server() as server:
            activities = engine_activities(engine, SmtpSettings(host=LOOPBACK, port=9))
            async with participant_worker(server.client, engine, TASK_QUEUE, activities):
                report = await enroll(
                    server.client, engine, FLOW_ID, [live_contact], task_queue=TASK_QUEUE
                )
                if not report.enrolled:
                    raise RuntimeError(f"the live participant was refused: {report.refused}")

                def live_id() -> str | None:
                    with engine.connect() as connection:
                        found: str | None = connection.execute(
                            select(participants.c.id).where(
                                participants.c.contact_id == live_contact,
                                participants.c.current_step == "hold",
                            )
                        ).scalar()
                    return found

                async def parked() -> bool:
                    return live_id() is not None

                await until(parked, "the live participant in the hold")
                flow = f"/flows/{FLOW_ID}"
                pages = {
                    "flows list": "/flows",
                    "a flow's page": flow,
                    "participants, page 1": f"{flow}/participants",
                    "participants, page 100": f"{flow}/participants?page=100",
                    "participants at one step": f"{flow}/participants?step=nurture-wait",
                    "participants at one step, page 20": (
                        f"{flow}/participants?step=nurture-wait&page=20"
                    ),
                    "a live participant (asks its workflow)": (f"{flow}/participants/{live_id()}"),
                    "a finished participant": f"{flow}/participants/{finished}",
                }
                settings = ConsoleSettings(
                    secret=uuid.uuid4().hex + uuid.uuid4().hex,
                    task_queue=TASK_QUEUE,
                    temporal_ui_url="http://localhost:8233",
                    port=free_port(),
                )
                app = create_app(engine, server.client, settings)
                async with (
                    serving(app, host=LOOPBACK, port=settings.port) as url,
                    httpx.AsyncClient(base_url=url, timeout=30) as http,
                ):
                    await _sign_in(http, "admin@bench.example.org")
                    for index in range(options.rounds):
                        progress(f"console round {index + 1}/{options.rounds}")
                        base = median(await bounded(_time(http, "/healthz"), "/healthz"))
                        for name, path in pages.items():
                            taken = median(await bounded(_time(http, path), name))
                            row = result.row(f"{name}: median response", "ms")
                            row.engine.append(taken)
                            row.baseline.append(base)
        engine.dispose()
    for row in result.rows:
        verdict = "under" if row.engine_median < GOAL_MS else "NOT under"
        page = row.metric.removesuffix(": median response")
        result.notes.append(f"{page}: {row.engine_median:.0f} ms, {verdict} {GOAL_MS:.0f} ms")
    return result
