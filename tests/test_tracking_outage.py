"""``python -m tracking`` as an operator runs it, started before the Temporal server it talks to:
it serves redirects, the pixel and forms at once, records them, and hands them to the
participants once a real Temporal server comes up."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import Engine

from models.demo import DEMO_FORM_ID
from models.engine import ParticipantStatus
from models.tracking_links import Claims, TrackingLinks
from testkit.processes import ChildProcess, TemporalServer
from testkit.servers import LOOPBACK, free_port
from testkit.waiting import assert_eventually
from tests.test_events import (
    DONE,
    KARIN,
    WAIT,
    crm_events,
    flow_document,
    participant_status,
    running_flow,
)
from tracking.app import INGEST_WAIT
from worker import build_worker

SECRET = "9c1e5b7f0a3d48e6b2c07f19d5a8e364-tracking"
TARGET = "https://www.example.com/offer"


class TrackingProcess(ChildProcess):
    """``python -m tracking`` with its settings in the environment."""

    READY = "tracking: serving on"

    def __init__(self, settings: dict[str, str], log: Path) -> None:
        super().__init__("tracking", log)
        self.settings = settings

    def command(self) -> list[str]:
        return [sys.executable, "-u", "-m", "tracking"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.settings}

    async def serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.READY not in self.output():
            assert self.running, f"the tracking service exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"the service does not serve:\n{self.tail()}"
            await asyncio.sleep(0.1)


async def test_the_service_serves_before_temporal_is_up_and_delivers_once_it_is(
    engine: Engine, task_queue: str, tmp_path: Path
) -> None:
    temporal = TemporalServer(tmp_path / "temporal.db", tmp_path / "temporal.log")
    port = free_port()
    base_url = f"http://{LOOPBACK}:{port}"
    service = TrackingProcess(
        {
            "TEMPORAL_ADDRESS": temporal.address,  # nothing listens there yet
            "DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "TASK_QUEUE": task_queue,
            "TRACKING_SECRET": SECRET,
            "TRACKING_HOST": LOOPBACK,
            "TRACKING_PORT": str(port),
            "TRACKING_BASE_URL": base_url,
        },
        tmp_path / "tracking.log",
    )
    triggers = [{"kind": "form_submitted", "form_id": DEMO_FORM_ID}]
    flow_id = running_flow(engine, flow_document("tr-outage", [WAIT, DONE], triggers=triggers))
    links = TrackingLinks(base_url=base_url, secret=SECRET)
    service.start()
    try:
        await service.serving()
        async with httpx.AsyncClient(base_url=base_url) as http:
            started = time.monotonic()
            form = await http.post(
                f"/f/{DEMO_FORM_ID}", params={"c": links.form_token(KARIN)}, data={"a": "b"}
            )
            assert (form.status_code, form.text) == (200, "Thank you.\n")
            click_url = links.click_url(Claims(contact_id=KARIN, flow_id=flow_id, url=TARGET))
            click = await http.get(click_url.removeprefix(base_url))
            assert (click.status_code, click.headers["location"]) == (302, TARGET)
            pixel = await http.get(links.open_url(Claims(contact_id=KARIN)).removeprefix(base_url))
            assert pixel.status_code == 200
            assert time.monotonic() - started < 3  # nobody waits on a server that is down
        rows = crm_events(engine)
        assert sorted(row.kind for row in rows) == [
            "email_opened",
            "form_submitted",
            "link_clicked",
        ]
        assert [row.delivered_at for row in rows] == [None] * 3

        temporal.start()
        client = await temporal.client()
        async with build_worker(client, engine, task_queue=task_queue):
            # The form fired the flow's trigger: the contact is enrolled by what was recorded.
            await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
            await assert_eventually(
                lambda: asyncio.to_thread(crm_events, engine),
                timeout=30,
                until=lambda found: all(row.delivered_at is not None for row in found),
                what="every recorded event delivered",
            )

        # Temporal goes away again: the service goes on serving and recording, and delivers
        # when the server is back.
        temporal.stop()
        async with httpx.AsyncClient(base_url=base_url) as http:
            started = time.monotonic()
            for n in range(5):
                url = links.click_url(Claims(contact_id=KARIN, url=f"{TARGET}?n={n}"))
                assert (await http.get(url.removeprefix(base_url))).status_code == 302
            # The first visitor may wait a moment for the engine, the others do not.
            assert time.monotonic() - started < INGEST_WAIT + 1
        # The three events, the five clicks, and the VIP selection the form's own action added
        # Karin to when the form was delivered.
        assert len(crm_events(engine)) == 9
        assert [row.kind for row in crm_events(engine)].count("added_to_selection") == 1
        temporal.start()
        await temporal.client()
        await assert_eventually(
            lambda: asyncio.to_thread(crm_events, engine),
            timeout=60,
            until=lambda found: all(row.delivered_at is not None for row in found),
            what="the clicks made while Temporal was down delivered",
        )
        assert service.running, service.tail()
    finally:
        service.stop()
        temporal.stop()
