"""What operators see: search attributes and summaries in Temporal, statistics, the diagram, the
dry run, and the worker's Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import starter
from activities.metrics import metrics_runtime
from control.dry_run import DryRun, PlannedEvent, dry_run, render_timeline
from control.enrollment import enroll, selection_members
from control.flows import deploy_flow, load_flow
from models.crm import SelectionMember
from models.database import session
from models.demo import DEMO_SELECTION_ID
from models.engine import CrmEvent, Delivery, Participant
from models.participant import Enrollment, ParticipantState
from models.payloads import DATA_CONVERTER
from models.personal_data import mask_email, mask_phone, short_name
from models.settings import Settings
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings
from testkit.servers import free_port
from testkit.waiting import assert_eventually
from tests.test_participant import STOCKHOLM
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow

EMAIL = {"subscription_type": "newsletter", "from": {"address": "news@example.com"}}
WINDOW = {"weekdays": "workdays", "start": "08:00", "end": "17:00"}


def hold_flow(flow_id: str) -> dict[str, Any]:
    """Email everyone; customers then wait five days, prospects finish, the rest wait two."""
    return {
        "id": flow_id,
        "name": "Observed flow",
        "time_zone": "Europe/Stockholm",
        "email": EMAIL,
        "start": "mail",
        "steps": [
            {
                "id": "mail",
                "name": "Hello",
                "type": "send_email",
                "subject": "Hello [[customer.firstname]]",
                "text": "Hi",
                "next": "sort",
            },
            {
                "id": "sort",
                "name": "Who are they?",
                "type": "split",
                "branches": [
                    {
                        "name": "Customers",
                        "next": "customer-wait",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "company.category",
                                    "operator": "equals",
                                    "value": "Customer",
                                }
                            ]
                        },
                    },
                    {
                        "name": "Prospects",
                        "next": "done",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "company.category",
                                    "operator": "equals",
                                    "value": "Prospect",
                                }
                            ]
                        },
                    },
                ],
                "everyone_else": {"next": "other-wait"},
            },
            {
                "id": "customer-wait",
                "name": "Five days",
                "type": "wait_time",
                "amount": 5,
                "unit": "days",
                "next": "done",
            },
            {
                "id": "other-wait",
                "name": "Two days",
                "type": "wait_time",
                "amount": 2,
                "unit": "days",
                "next": "done",
            },
            {"id": "done", "name": "Done", "type": "finish"},
        ],
    }


def _members(engine: Engine) -> list[int]:
    return selection_members(engine, DEMO_SELECTION_ID)


async def _settled(engine: Engine, flow_id: str, count: int) -> list[Participant]:
    """The participants once each is finished or waiting (visible as wait_until)."""

    def read() -> list[Participant]:
        with session(engine) as db:
            return list(db.exec(select(Participant).where(Participant.flow_id == flow_id)).all())

    def settled(rows: list[Participant]) -> bool:
        return len(rows) == count and all(r.status != "Active" or r.wait_until for r in rows)

    return await assert_eventually(
        lambda: asyncio.to_thread(read), timeout=30, until=settled, what="participants settled"
    )


def _summaries(events: list[HistoryEvent]) -> list[str]:
    converter = DATA_CONVERTER.payload_converter
    return [
        converter.from_payload(e.user_metadata.summary, str)
        for e in events
        if e.user_metadata.HasField("summary")
    ]


def test_personal_data_is_masked() -> None:
    assert short_name("Karin", "Svensson") == "Karin S."
    assert short_name("Karin", "") == "Karin"
    assert mask_email("karin.svensson@example.com") == "k…@example.com"
    assert mask_email("broken") == "…"
    assert mask_phone("+46 70 123 45 67") == "…4567"


async def test_participants_carry_search_attributes_and_summaries(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, smtp_inbox: Inbox
) -> None:
    deployed = deploy_flow(engine, hold_flow(f"obs-{uuid.uuid4().hex[:6]}"))
    activities = activities_for(engine, smtp_inbox.settings)
    async with build_worker(dev_env.client, engine, task_queue=task_queue, activities=activities):
        report = await enroll(
            dev_env.client, engine, deployed.flow_id, _members(engine), task_queue=task_queue
        )
        rows = await _settled(engine, deployed.flow_id, len(report.enrolled))
        karin = dev_env.client.get_workflow_handle(f"flow-{deployed.flow_id}-contact-1")
        metadata = await karin.query("__temporal_workflow_metadata")
    assert metadata.current_details == "At step 'Five days' (wait_time)"
    waiting = sorted(r.contact_id for r in rows if r.current_step == "customer-wait")
    assert waiting, "some demo contacts are customers"

    # "Everyone in flow X waiting at step Y", as the UI's filter box asks it.
    query = (
        f"FlowId='{deployed.flow_id}' AND FlowStep='customer-wait' "
        "AND ParticipantStatus='Active' AND ExecutionStatus='Running'"
    )
    expected = sorted(f"flow-{deployed.flow_id}-contact-{c}" for c in waiting)

    async def found() -> list[str]:
        return sorted([w.id async for w in dev_env.client.list_workflows(query)])

    # Visibility is eventually consistent.
    await assert_eventually(found, until=expected.__eq__, what="the UI's query")

    events = [e async for e in karin.fetch_history_events()]
    summaries = _summaries(events)
    assert summaries[0] == f"Karin S. (contact 1) in 'Observed flow' v{deployed.version}"
    assert "Send email 'Hello [[customer.firstname]]' to contact 1" in summaries
    assert "Split 'Who are they?' on data" in summaries
    assert any(s.startswith("Wait until ") and s.endswith(" Europe/Stockholm") for s in summaries)
    for workflow in [
        w
        async for w in dev_env.client.list_workflows(
            f"FlowId='{deployed.flow_id}' AND ExecutionStatus='Running'"
        )
    ]:
        await dev_env.client.get_workflow_handle(workflow.id).terminate("test over")


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    settings_env: Callable[..., Settings],
    engine: Engine,
    dev_env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    settings_env(
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
    )
    monkeypatch.setattr(starter, "TASK_QUEUE", task_queue)


@pytest.mark.usefixtures("cli_env")
async def test_stats_and_diagram_count_participants_at_several_steps(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow_id = f"obs-{uuid.uuid4().hex[:6]}"
    deploy_flow(engine, hold_flow(flow_id))
    activities = activities_for(engine, smtp_inbox.settings)
    async with build_worker(dev_env.client, engine, task_queue=task_queue, activities=activities):
        report = await enroll(
            dev_env.client, engine, flow_id, _members(engine), task_queue=task_queue
        )
        rows = await _settled(engine, flow_id, len(report.enrolled))
    at = {
        step: sum(1 for r in rows if r.status == "Active" and r.current_step == step)
        for step in ("customer-wait", "other-wait")
    }
    finished = sum(1 for r in rows if r.status == "Finished")
    assert at["customer-wait"] and at["other-wait"] and finished, (at, finished)
    with session(engine) as db:
        sent = sum(
            1
            for d in db.exec(select(Delivery)).all()
            if d.key.split("/")[0] in {r.id for r in rows} and d.status == "sent"
        )
    assert sent == len(smtp_inbox.messages())

    assert await asyncio.to_thread(starter.main, ["stats", flow_id]) == 0
    table = capsys.readouterr().out
    assert f"enrolled     {len(rows):>6}" in table
    assert "Five days (wait_time)" in table
    assert "(tracking not enabled" in table

    # Opens arrive as crm_events rows (the tracking service's contract): they light up.
    with session(engine) as db:
        db.add(
            CrmEvent(
                event_id=f"open-{flow_id}",
                kind="email_opened",
                contact_id=1,
                payload={"flow_id": flow_id, "step_id": "mail"},
            )
        )
    assert await asyncio.to_thread(starter.main, ["stats", flow_id, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["enrolled"] == len(rows)
    assert stats["completed"] == finished
    assert stats["in_progress"] == at["customer-wait"] + at["other-wait"]
    by_step = {s["step_id"]: s["participants"] for s in stats["by_step"]}
    assert by_step["customer-wait"] == at["customer-wait"]
    assert by_step["other-wait"] == at["other-wait"]
    (mail,) = stats["email_steps"]
    assert mail["recipients"] == sent
    assert mail["opens"] == 1 and mail["clicks"] == 0
    assert stats["tracking_enabled"] is True
    assert sum(stats["enrolled_per_day"].values()) == len(rows)

    assert await asyncio.to_thread(starter.main, ["diagram", flow_id, "--mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("---\ntitle: Observed flow")
    through_mail = len(rows)
    assert f"at 0 · through {through_mail}" in mermaid  # everyone passed the email step
    assert f"at {at['customer-wait']} · through {at['customer-wait']}" in mermaid
    assert '-->|"Customers"|' in mermaid

    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed: the PNG/SVG picture is not drawn")
    picture = tmp_path / f"{flow_id}.png"
    assert await asyncio.to_thread(starter.main, ["diagram", flow_id, "-o", str(picture)]) == 0
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert picture.with_suffix(".mmd").read_text() == mermaid
    for workflow in [
        w
        async for w in dev_env.client.list_workflows(
            f"FlowId='{flow_id}' AND ExecutionStatus='Running'"
        )
    ]:
        await dev_env.client.get_workflow_handle(workflow.id).terminate("test over")


def dry_run_flow(flow_id: str) -> dict[str, Any]:
    """Working days, a sending window and a split: the calendar is the point."""
    return {
        "id": flow_id,
        "name": "Dry run check",
        "time_zone": "Europe/Stockholm",
        "email": EMAIL,
        "sms_sender": "Nordljus",
        "sending_window": WINDOW,
        "start": "mail",
        "steps": [
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Hello [[customer.firstname]]",
                "text": "Hi",
                "next": "pause",
            },
            {
                "id": "pause",
                "type": "wait_time",
                "amount": 2,
                "unit": "working_days",
                "next": "sort",
            },
            {
                "id": "sort",
                "type": "split",
                "branches": [
                    {
                        "name": "Customers",
                        "next": "sms",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "company.category",
                                    "operator": "equals",
                                    "value": "Customer",
                                }
                            ]
                        },
                    }
                ],
                "everyone_else": {"next": "later"},
            },
            {
                "id": "sms",
                "type": "send_sms",
                "text": "Hej [[customer.firstname]]!",
                "exit_if_no_mobile": True,
                "next": "vip",
            },
            {"id": "vip", "type": "add_to_list", "selection_id": 2, "next": "done"},
            {"id": "later", "type": "wait_time", "amount": 90, "unit": "days", "next": "again"},
            {
                "id": "again",
                "type": "send_email",
                "subject": "Still there?",
                "text": "Hi again",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }


def _story(state: ParticipantState) -> list[tuple[str, datetime, str]]:
    """Each visit: step, local entry time to the minute, and the outcome's gist."""
    return [
        (
            visit.step,
            visit.entered_at.astimezone(STOCKHOLM).replace(tzinfo=None, second=0, microsecond=0),
            visit.outcome.split(":")[0],
        )
        for visit in state.trail
    ]


def _ledger(engine: Engine) -> tuple[int, int]:
    with session(engine) as db:
        return len(db.exec(select(Delivery)).all()), len(db.exec(select(SelectionMember)).all())


@pytest.mark.parametrize(
    "contact_id", [1, 2, 6, 7], ids=["customer", "no-mobile", "former-employee", "private"]
)
async def test_the_dry_run_timeline_matches_a_real_run(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
    settings_env: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    contact_id: int,
) -> None:
    flow_id = f"dry-{uuid.uuid4().hex[:6]}"
    deployed = deploy_flow(engine, dry_run_flow(flow_id))
    # A Friday afternoon a week ahead of both clocks: the email waits for Monday 08:00.
    now = max(await time_skipping_env.get_current_time(), datetime.now(STOCKHOLM))
    day = now.astimezone(STOCKHOLM).date() + timedelta(days=7)
    while day.weekday() != 4:
        day += timedelta(days=1)
    friday = datetime(day.year, day.month, day.day, 17, 30)

    settings_env(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    before = _ledger(engine)
    code = await asyncio.to_thread(
        starter.main,
        ["simulate", flow_id, "--contact", str(contact_id), "--at", friday.isoformat(), "--json"],
    )
    assert code == 0
    dry = DryRun.model_validate_json(capsys.readouterr().out)
    assert _ledger(engine) == before, "a dry run sends and changes nothing"

    # The same contact for real, enrolled at the same moment on the session's test server.
    start = friday.replace(tzinfo=STOCKHOLM)
    await time_skipping_env.sleep(start - await time_skipping_env.get_current_time())
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        handle: WorkflowHandle[
            Any, ParticipantState
        ] = await time_skipping_env.client.start_workflow(
            ParticipantWorkflow.run,
            Enrollment(
                flow=load_flow(engine, flow_id).flow,
                flow_version=deployed.version,
                contact_id=contact_id,
            ),
            id=f"real-{flow_id}-{contact_id}",
            task_queue=task_queue,
        )
        real = await handle.result()

    # The same steps at the same local minutes with the same outcomes, except that a CRM change
    # a dry run does not perform says so instead of describing its effect.
    assert [(step, at) for step, at, _ in _story(dry.state)] == [
        (step, at) for step, at, _ in _story(real)
    ]
    for (_, _, imagined), (_, _, happened) in zip(_story(dry.state), _story(real), strict=True):
        assert imagined in (happened, "not performed (dry run)")
    assert (dry.state.status, dry.state.drop_out_reason) == (real.status, real.drop_out_reason)
    if contact_id == 6:  # a former employee leaves at the checks before the first step
        assert real.status.value == "Dropped out" and real.drop_out_reason
        return
    assert _story(real)[1][1] == friday.replace(hour=8, minute=0) + timedelta(days=3)  # Monday

    text = render_timeline(dry)
    assert "⏸ Sending window opens Mon" in text
    assert "Nothing was sent" in text
    if contact_id == 1:
        # Each send once (the participant's worker declines in a dry run; the queue's stand-in
        # captures it), the list step as the one other change.
        assert "2 message(s) and 1 other change(s) were captured" in text
        assert "email 'Hello Karin' to k…@example.com" in text
        assert "SMS 'Hej Karin!' to …4567" in text
        assert "Add to selection 2 (add_to_list, not performed)" in text
    if contact_id == 2:
        assert "skipped: no mobile number" in text and "Dropped out: no mobile number" in text
    if contact_id == 7:
        assert "▶ again (send_email)" in text
        assert dry.ended_at - dry.started_at > timedelta(days=90)  # a 90-day wait, in seconds
        assert dry.wall_seconds < 60


async def test_the_worker_serves_engine_counters_to_prometheus(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, smtp_inbox: Inbox
) -> None:
    port = free_port()
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        data_converter=DATA_CONVERTER,
        runtime=metrics_runtime(port),
    )
    flow = hold_flow(f"obs-{uuid.uuid4().hex[:6]}")
    flow["steps"] = [{**flow["steps"][0], "next": "done"}, flow["steps"][-1]]
    deployed = deploy_flow(engine, flow)
    activities = activities_for(engine, smtp_inbox.settings)
    async with build_worker(client, engine, task_queue=task_queue, activities=activities):
        report = await enroll(client, engine, deployed.flow_id, [1, 4], task_queue=task_queue)
        for contact_id in report.enrolled:
            await client.get_workflow_handle(
                f"flow-{deployed.flow_id}-contact-{contact_id}"
            ).result()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    metrics = await asyncio.to_thread(scrape)
    counts = {
        line.split("{")[1].split("}")[0]: line.rsplit(" ", 1)[1]
        for line in metrics.splitlines()
        if line.startswith("flows_messages_total{")
    }
    sent = [
        labels for labels in counts if 'channel="email"' in labels and 'status="sent"' in labels
    ]
    skipped = [
        labels for labels in counts if 'channel="email"' in labels and 'status="skipped"' in labels
    ]
    assert sent and counts[sent[0]] == "1", metrics
    assert skipped and counts[skipped[0]] == "1", metrics  # Oliver: no mailings
    assert "temporal_" in metrics  # the SDK's own metrics on the same endpoint


def test_planned_events_are_parsed_from_the_command_line() -> None:
    planned = PlannedEvent.parse("form_submitted@3h,form=1,data.topic=pricing")
    assert (planned.after, planned.kind, planned.form_id) == (
        timedelta(hours=3),
        "form_submitted",
        1,
    )
    assert planned.data == {"topic": "pricing"}
    clicked = PlannedEvent.parse("link_clicked@2d,step=mail,link=https://x.example/a")
    event = clicked.event("f", 1, datetime(2026, 1, 1, tzinfo=STOCKHOLM))
    assert (event.flow_id, event.step_id, event.link) == ("f", "mail", "https://x.example/a")
    for wrong in ("link_clicked", "link_clicked@2y", "link_clicked@2d,colour=red", "nope@1d"):
        with pytest.raises(ValueError):
            PlannedEvent.parse(wrong)


def waiting_flow(flow_id: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": "Waits for a click",
        "time_zone": "Europe/Stockholm",
        "email": EMAIL,
        "start": "mail",
        "steps": [
            {"id": "mail", "type": "send_email", "subject": "Hi", "text": "Hi", "next": "click"},
            {
                "id": "click",
                "type": "wait_for_action",
                "actions": [{"kind": "link_clicked", "email_step": "mail"}],
                "exit_on_timeout": True,
                "next": "thanks",
            },
            {"id": "thanks", "type": "add_to_list", "selection_id": 2, "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }


async def test_planned_events_steer_the_dry_run(
    time_skipping_env: WorkflowEnvironment, engine: Engine
) -> None:
    flow_id = f"dry-{uuid.uuid4().hex[:6]}"
    deploy_flow(engine, waiting_flow(flow_id))

    clicked = await dry_run(
        engine,
        flow_id,
        1,
        events=[PlannedEvent.parse("link_clicked@1d,step=mail")],
        env=time_skipping_env,
    )
    (visit,) = [v for v in clicked.state.trail if v.step == "click"]
    assert visit.outcome.startswith("link clicked")
    assert [v.step for v in clicked.state.trail] == ["mail", "click", "thanks", "done"]
    text = render_timeline(clicked)
    assert "⚡ link_clicked (step mail)" in text
    assert "Add to selection 2 (add_to_list, not performed)" in text

    silent = await dry_run(engine, flow_id, 1, env=time_skipping_env)
    assert (silent.state.status.value, silent.state.drop_out_reason) == (
        "Dropped out",
        "no response",
    )
    # Seven days on the flow's wall clock: an hour less of UTC if a DST change falls in between.
    assert silent.ended_at - silent.started_at >= timedelta(days=7) - timedelta(hours=1)
