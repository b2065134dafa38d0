"""The tracking service on the open internet: what it refuses before reading, how much it takes,
how often, and how long it waits for a client; over real HTTP (uvicorn on a loopback port), raw
sockets where a well-behaved client would not do what an attacker does."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from models.demo import DEMO_FORM_ID
from models.engine import CrmEvent
from models.events import FlowEvent
from models.settings import Settings
from models.tracking_links import Claims, Purpose, TrackingLinks
from testkit.servers import LOOPBACK, free_port
from tests.test_events import KARIN, crm_events
from tracking.app import MAX_FIELD_LENGTH, TrackingSettings, create_app
from tracking.server import serving

SECRET = "9c1e5b7f0a3d48e6b2c07f19d5a8e364-tracking"
EVENTS_TOKEN = "4f0d2b9a7c13e5f8a6b1d0c9e7f3a2b5-events"
TARGET = "https://www.example.com/offer"
FORM = f"/f/{DEMO_FORM_ID}"


def taken_in(engine: Engine) -> list[CrmEvent]:
    """The events the service recorded, without the changes the demo form's own actions made."""
    return [row for row in crm_events(engine) if "/actions/" not in row.event_id]


Service = Callable[..., AbstractAsyncContextManager[tuple[TrackingLinks, httpx.AsyncClient]]]


@pytest.fixture
def service(engine: Engine, dev_env: WorkflowEnvironment, task_queue: str) -> Service:
    """``async with service(rate_limit=3, header_seconds=0.5) as (links, http)``: the service
    with those settings on a port of its own, and an HTTP client for it."""

    @asynccontextmanager
    async def running(
        header_seconds: float = 10.0, **changes: Any
    ) -> AsyncIterator[tuple[TrackingLinks, httpx.AsyncClient]]:
        port = free_port()
        links = TrackingLinks(base_url=f"http://{LOOPBACK}:{port}", secret=SECRET)
        settings = TrackingSettings(
            links=links, task_queue=task_queue, port=port, events_token=EVENTS_TOKEN
        )
        app = create_app(engine, dev_env.client, replace(settings, **changes))
        async with (
            serving(app, host=LOOPBACK, port=port, header_seconds=header_seconds) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            yield links, http

    return running


async def raw(url: str, request: bytes, *, wait: float = 5.0) -> bytes:
    """What the server answers to these bytes, sent as they are on a new connection, within
    ``wait`` seconds (b"" when it closes without a word); TimeoutError when it says nothing."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read(65_536)
    finally:
        writer.close()


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer
    return int(answer.split()[1])


def base_url(http: httpx.AsyncClient) -> str:
    return str(http.base_url).rstrip("/")


def form_post(path: str, length: int, body: bytes = b"", *, chunked: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}".encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + framing
        + b"\r\n\r\n"
        + body
    )


# --- sizes ---------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_gets_413_before_it_is_read(
    engine: Engine, service: Service
) -> None:
    async with service() as (links, http):
        url = base_url(http)
        # 100 MB announced, 1 KB sent: answered at once, without waiting for the rest.
        announced = form_post(FORM, 100_000_000, b"a=" + b"x" * 1_000)
        assert status(await raw(url, announced)) == 413
        # No length announced: read until the limit, then 413 (not 403 after the whole body).
        chunk = b"x" * 32_768
        streamed = form_post(FORM, 0, b"".join([b"8000\r\n" + chunk + b"\r\n"] * 4), chunked=True)
        assert status(await raw(url, streamed)) == 413
        events = json.dumps({"event_id": "e", "data": {"a": "x" * 70_000}}).encode()
        auth = {"Authorization": f"Bearer {EVENTS_TOKEN}"}
        assert (await http.post("/events", content=events, headers=auth)).status_code == 413

        # A token in the query is checked before the body: a forged one never waits for it.
        forged = TrackingLinks(base_url=links.base_url, secret="f" + SECRET[1:])
        path = f"{FORM}?c={forged.form_token(KARIN)}"
        assert status(await raw(url, form_post(path, 5_000, b"a=1"))) == 403
    assert crm_events(engine) == []


async def test_form_fields_are_bounded_in_name_value_repetition_and_total(
    engine: Engine, service: Service
) -> None:
    async with service() as (links, http):
        token = {"c": links.form_token(KARIN)}
        over = "x" * (MAX_FIELD_LENGTH // 2 + 1)
        refused: list[dict[str, Any]] = [
            {"size": [over, over]},  # repeated: the values joined are too long
            {"size": ["x" * 1_000] * 11},
            {"n" * 101: "1"},  # a name longer than 100 characters
            {f"field{n}": "x" * 1_000 for n in range(21)},  # 21,000+ characters in all
        ]
        for data in refused:
            response = await http.post(FORM, params=token, data=data)
            assert response.status_code == 413, (response.status_code, response.text)
        assert crm_events(engine) == []

        accepted = await http.post(FORM, params=token, data={"size": ["10", "50"], "a": "b"})
        assert (accepted.status_code, accepted.text) == (200, "Thank you.\n")
    [row] = taken_in(engine)
    assert FlowEvent.model_validate(row.payload).data == {"size": "10,50", "a": "b"}

    async with service() as (links, http):
        auth = {"Authorization": f"Bearer {EVENTS_TOKEN}"}
        big = _outside_event(data={f"f{n}": "x" * 1_000 for n in range(30)})
        assert (await http.post("/events", content=big, headers=auth)).status_code == 413
    assert len(taken_in(engine)) == 1


# --- tokens and rates ----------------------------------------------------------------------------


async def test_malformed_tokens_and_ids_get_4xx_never_500(engine: Engine, service: Service) -> None:
    async with service() as (links, http):
        click = links.sign(Purpose.click, Claims(contact_id=KARIN, url=TARGET))
        payload, signature = click.split(".")
        form = links.form_token(KARIN)
        answers = {
            f"/t/c/{payload}.%C3%A9": 403,
            f"/t/c/{payload}.{signature}%C3%A9": 403,
            f"/t/c/{payload}.%FF%FE": 403,
            f"/t/o/{payload}.%C3%A9.gif": 403,
            f"/t/c/{payload}.{'A' * 5_000}": 403,
        }
        for path, expected in answers.items():
            assert (await http.get(path)).status_code == expected, path
        posts = {
            f"{FORM}?c={form[:-1]}%C3%A9": 403,
            f"{FORM}?c=%00": 403,
            f"/f/99999999999999999999?c={form}": 404,
            f"/f/0?c={form}": 404,
        }
        for path, expected in posts.items():
            assert (await http.post(path, data={"a": "1"})).status_code == expected, path
        assert (await http.post(FORM, data={"_contact": "é.é", "a": "1"})).status_code == 403
    assert crm_events(engine) == []


async def test_a_token_used_too_often_gets_429(engine: Engine, service: Service) -> None:
    async with service(rate_limit=3) as (links, http):
        click = links.click_url(Claims(contact_id=KARIN, url=TARGET)).removeprefix(links.base_url)
        other = links.click_url(Claims(contact_id=KARIN, url=TARGET + "?b"))
        codes = [(await http.get(click)).status_code for _ in range(5)]
        assert codes == [302, 302, 302, 429, 429]
        assert (await http.get(other.removeprefix(links.base_url))).status_code == 302
        form = {"c": links.form_token(KARIN)}
        codes = [
            (await http.post(FORM, params=form, data={"a": "1"})).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
    assert len(taken_in(engine)) == 5  # one click per link, three submissions


# --- slow clients --------------------------------------------------------------------------------


async def test_request_headers_must_arrive_in_time(service: Service) -> None:
    async with service(header_seconds=0.5) as (_, http):
        url = base_url(http)
        started = time.monotonic()
        # Half a request, then nothing: the server hangs up without an answer.
        assert await raw(url, b"GET /healthz HTTP/1.1\r\nHost: t\r\n", wait=5) == b""
        assert time.monotonic() - started < 3
        # A whole request is answered as usual.
        assert status(await raw(url, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")) == 200
        # Headers over 16 KiB are refused, whether they come at once or bit by bit.
        huge = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 20_000 + b"\r\n\r\n"
        assert status(await raw(url, huge)) == 431
        assert status(await raw(url, huge[:-4])) == 400


async def test_a_body_that_comes_too_slowly_gets_408(engine: Engine, service: Service) -> None:
    async with service(body_read_seconds=0.5) as (links, http):
        path = f"{FORM}?c={links.form_token(KARIN)}"
        started = time.monotonic()
        assert status(await raw(base_url(http), form_post(path, 1_000, b"a=1"))) == 408
        assert time.monotonic() - started < 3
    assert crm_events(engine) == []


def test_weak_secrets_stop_the_service_at_start(settings_env: Callable[..., Settings]) -> None:
    base = {"TRACKING_BASE_URL": "https://t.example.com"}
    for weak in ("s" * 32, "test-secret-" + "x" * 20, "tooshort"):
        with pytest.raises(ValueError, match="TRACKING_SECRET is too"):
            TrackingSettings.from_settings("q", settings_env(**base, TRACKING_SECRET=weak))
    for weak in ("x", "events-token", "ab" * 20):
        with pytest.raises(ValueError, match="TRACKING_EVENTS_TOKEN is too"):
            TrackingSettings.from_settings(
                "q",
                settings_env(**base, TRACKING_SECRET=SECRET, TRACKING_EVENTS_TOKEN=weak),
            )
    strong = settings_env(**base, TRACKING_SECRET=SECRET, TRACKING_EVENTS_TOKEN=EVENTS_TOKEN)
    assert TrackingSettings.from_settings("q", strong).events_token == EVENTS_TOKEN


def _outside_event(**fields: Any) -> bytes:
    event: dict[str, Any] = {
        "event_id": f"crm/{uuid.uuid4()}",
        "kind": "form_submitted",
        "contact_id": KARIN,
        "form_id": DEMO_FORM_ID,
        "occurred_at": datetime.now(UTC).isoformat(),
        **fields,
    }
    return json.dumps(event).encode()
