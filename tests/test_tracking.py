"""The tracking service over real HTTP (uvicorn on a loopback port) with the real dev server: a
click on a link in an email the SMTP inbox received, the open pixel, forms, outside events, and
tokens that are forged, altered or expired."""

from __future__ import annotations

import asyncio
import json
import mailbox
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from control.enrollment import enroll
from control.flows import deploy_flow
from models.demo import DEMO_FORM_ID, SPRING_OFFER_URL, VIP_SELECTION_ID
from models.engine import ParticipantStatus
from models.events import EventKind, FlowEvent
from models.participant import participant_workflow_id
from models.tracking_links import Claims, Purpose, TrackingLinks
from testkit.peers import Inbox
from testkit.servers import free_port
from testkit.waiting import assert_eventually
from tests.test_events import (
    DONE,
    KARIN,
    LARS,
    WAIT,
    crm_events,
    flow_document,
    participant_status,
    running_flow,
    signalled,
)
from tracking.app import PIXEL, TrackingSettings, create_app
from tracking.server import serving
from worker import activities_for, build_worker

SECRET = "test-secret-" + "x" * 20
EVENTS_TOKEN = "events-token"
EMAIL = {"subscription_type": "newsletter", "from": {"address": "news@example.com"}}
MAIL = {
    "id": "mail",
    "type": "send_email",
    "subject": "Spring offer",
    "html": f'<p>Hej [[customer.firstname]]!</p><p><a href="{SPRING_OFFER_URL}?utm=mail&amp;x=1">'
    'See the offer</a> or <a href="mailto:sales@example.com">write to us</a>.</p>',
    "text": f"Hej [[customer.firstname]]! The offer: {SPRING_OFFER_URL}?utm=mail&x=1.",
    "next": "wait",
}
TARGET = f"{SPRING_OFFER_URL}?utm=mail&x=1"


@pytest.fixture
def links() -> TrackingLinks:
    return TrackingLinks(base_url=f"http://127.0.0.1:{free_port()}", secret=SECRET)


@pytest.fixture
async def tracking(
    links: TrackingLinks, engine: Engine, dev_env: WorkflowEnvironment, task_queue: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The service on the port its links name, and an HTTP client for it."""
    port = int(links.base_url.rsplit(":", 1)[1])
    settings = TrackingSettings(
        links=links, task_queue=task_queue, port=port, events_token=EVENTS_TOKEN
    )
    app = create_app(engine, dev_env.client, settings)
    async with (
        serving(app, host="127.0.0.1", port=port) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        yield http


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.hrefs.append(str(found["href"]))
        if tag == "img" and found.get("src"):
            self.images.append(str(found["src"]))


async def received(inbox: Inbox) -> EmailMessage:
    await assert_eventually(lambda: asyncio.to_thread(inbox.count), what="a message in the inbox")
    box = mailbox.Maildir(inbox.maildir, factory=None, create=False)
    [key] = list(box.iterkeys())
    message = BytesParser(policy=default_policy).parsebytes(box.get_bytes(key))
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, kind: str) -> str:
    part = message.get_body(preferencelist=(kind,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


async def test_a_click_in_a_received_email_is_recorded_redirected_and_reaches_the_participant(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    links: TrackingLinks,
    tracking: httpx.AsyncClient,
) -> None:
    flow_id = deploy_flow(
        engine, flow_document("tr-click", [MAIL, WAIT, DONE], email=EMAIL)
    ).flow_id
    smtp = replace(smtp_inbox.settings, tracking=links)
    activities = activities_for(engine, smtp)
    async with build_worker(dev_env.client, engine, task_queue=task_queue, activities=activities):
        await enroll(dev_env.client, engine, flow_id, [KARIN], task_queue=task_queue)
        message = await received(smtp_inbox)
        await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)

        html = _Links()
        html.feed(body(message, "html"))
        tracked, mailto = html.hrefs
        assert tracked.startswith(f"{links.base_url}/t/c/") and SPRING_OFFER_URL not in tracked
        assert mailto == "mailto:sales@example.com"
        [pixel] = html.images
        assert pixel.startswith(f"{links.base_url}/t/o/") and pixel.endswith(".gif")
        text = body(message, "plain")
        assert f"{links.base_url}/t/c/" in text and SPRING_OFFER_URL not in text

        clicked_at = time.monotonic()
        response = await tracking.get(tracked)
        assert (response.status_code, response.headers["location"]) == (302, TARGET)
        [row] = crm_events(engine)
        event = FlowEvent.model_validate(row.payload)
        assert (event.kind, event.contact_id, event.link) == ("link_clicked", KARIN, TARGET)
        assert (event.flow_id, event.step_id) == (flow_id, "mail")
        workflow_id = participant_workflow_id(flow_id, KARIN)
        await signalled(dev_env.client, workflow_id, [("event", event.event_id)])
        assert time.monotonic() - clicked_at < 1.0  # spec: within a second

        # The link in the text body goes to the same place (the same link: clicked again within
        # the hour, it is the same event); the pixel records an open.
        text_link = text.split("The offer: ")[1].split()[0].rstrip(".")
        assert (await tracking.get(text_link)).headers["location"] == TARGET
        opened = await tracking.get(pixel)
        assert (opened.status_code, opened.headers["content-type"]) == (200, "image/gif")
        assert opened.content == PIXEL
        kinds = [row.kind for row in crm_events(engine)]
        assert kinds == ["link_clicked", "email_opened"]


@pytest.mark.usefixtures("dev_env")
async def test_forged_altered_or_expired_tokens_get_4xx_and_record_nothing(
    engine: Engine, links: TrackingLinks, tracking: httpx.AsyncClient
) -> None:
    claims = Claims(contact_id=KARIN, flow_id="f", step_id="mail", url=TARGET)
    forger = TrackingLinks(base_url=links.base_url, secret="not-the-secret-" + "y" * 20)
    good = links.sign(Purpose.click, claims)
    payload, signature = good.split(".")
    evil = links.sign(Purpose.click, replace(claims, url="https://evil.example.com")).split(".")[0]
    expired = links.sign(Purpose.click, claims, expires_at=time.time() - 1)
    refused = {
        f"/t/c/{forger.sign(Purpose.click, claims)}": 403,
        f"/t/c/{evil}.{signature}": 403,
        f"/t/c/{payload}.{signature[::-1]}": 403,
        f"/t/c/{payload}": 403,
        f"/t/c/{links.sign(Purpose.open, claims)}": 403,  # an open token is not a click token
        f"/t/c/{expired}": 410,
        f"/t/o/{forger.sign(Purpose.open, claims)}.gif": 403,
        f"/t/o/{links.sign(Purpose.open, claims, expires_at=time.time() - 1)}.gif": 410,
    }
    for path, status in refused.items():
        response = await tracking.get(path)
        assert response.status_code == status, path
        assert "location" not in response.headers

    form = f"/f/{DEMO_FORM_ID}"
    forged_form = await tracking.post(form, data={"_contact": forger.form_token(KARIN), "a": "1"})
    assert forged_form.status_code == 403
    old = links.sign(Purpose.form, Claims(contact_id=KARIN), expires_at=time.time() - 1)
    assert (await tracking.post(form, params={"c": old}, data={"a": "1"})).status_code == 410
    assert (await tracking.post(form, data={"a": "1"})).status_code == 403  # no token at all

    event = _outside_event()
    assert (await tracking.post("/events", content=event)).status_code == 401
    wrong = {"Authorization": "Bearer guess"}
    assert (await tracking.post("/events", content=event, headers=wrong)).status_code == 401
    assert crm_events(engine) == []
    assert (await tracking.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.usefixtures("dev_env")
async def test_a_link_replayed_within_the_window_is_one_event(
    engine: Engine, links: TrackingLinks, tracking: httpx.AsyncClient
) -> None:
    click = links.click_url(Claims(contact_id=LARS, url=TARGET)).removeprefix(links.base_url)
    pixel = links.open_url(Claims(contact_id=LARS)).removeprefix(links.base_url)
    retry = {"Idempotency-Key": str(uuid.uuid4())}
    keys = [{"Idempotency-Key": str(uuid.uuid4())} for _ in range(5)]
    for headers in (retry, retry, {}, {}, *keys):  # a key of the client's own changes nothing
        assert (await tracking.get(click, headers=headers)).status_code == 302
        assert (await tracking.get(pixel, headers=headers)).status_code == 200
    assert sorted(row.kind for row in crm_events(engine)) == ["email_opened", "link_clicked"]


async def test_a_form_submission_enrolls_through_its_trigger_with_the_fields(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    links: TrackingLinks,
    tracking: httpx.AsyncClient,
) -> None:
    flow_id = running_flow(
        engine,
        flow_document(
            "tr-form", [WAIT, DONE], triggers=[{"kind": "form_submitted", "form_id": DEMO_FORM_ID}]
        ),
    )
    fields = {
        "_contact": links.form_token(KARIN),
        "_submission": "page-load-1",
        "topic": "pricing",
        "size": ["10", "50"],
    }
    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        for _ in range(2):  # a double submit is one submission
            response = await tracking.post(f"/f/{DEMO_FORM_ID}", data=fields)
            assert (response.status_code, response.text) == (200, "Thank you.\n")
        await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
    [row] = [row for row in crm_events(engine) if row.kind == "form_submitted"]
    event = FlowEvent.model_validate(row.payload)
    assert (event.kind, event.form_id, event.contact_id) == ("form_submitted", DEMO_FORM_ID, KARIN)
    assert event.data == {"topic": "pricing", "size": "10,50"}
    workflow_id = participant_workflow_id(flow_id, KARIN)
    await signalled(dev_env.client, workflow_id, [("event", event.event_id)])

    unknown = await tracking.post("/f/999", data={"_contact": links.form_token(KARIN)})
    assert unknown.status_code == 404
    assert [row.kind for row in crm_events(engine)].count("form_submitted") == 1
    # The form's own actions ran once for the two submits: Karin joined the VIP selection (one
    # added_to_selection event), and had the Webinars interest already.
    assert row.payload["own_actions"]["outcomes"] == [
        f"selection {VIP_SELECTION_ID}: added",
        "add_interest: no change",
    ]
    assert [r.kind for r in crm_events(engine)].count("added_to_selection") == 1


@pytest.mark.usefixtures("dev_env")
async def test_crm_changes_from_outside_come_in_through_post_events(
    engine: Engine, tracking: httpx.AsyncClient
) -> None:
    auth = {"Authorization": f"Bearer {EVENTS_TOKEN}"}
    event = _outside_event()
    first = await tracking.post("/events", content=event, headers=auth)
    assert first.status_code == 200
    assert first.json() | {"event_id": ""} == {
        "event_id": "",
        "new": True,
        "delivered": True,
        "signalled": [],
        "enrolled": [],
        "refused": {},
        "actions": [],
    }
    again = await tracking.post("/events", content=event, headers=auth)
    assert (again.json()["new"], again.json()["delivered"]) == (False, False)
    invalid = await tracking.post("/events", content=b'{"kind": "sale_sold"}', headers=auth)
    assert invalid.status_code == 422
    assert [row.kind for row in crm_events(engine)] == ["sale_sold"]


def _outside_event() -> bytes:
    event: dict[str, Any] = {
        "event_id": f"crm/{uuid.uuid4()}",
        "kind": EventKind.sale_sold.value,
        "contact_id": KARIN,
        "sale_id": 12,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(event).encode()
