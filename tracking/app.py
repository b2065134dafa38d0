"""The tracking service's HTTP endpoints (Starlette).

- ``GET /t/c/{token}``: a click on a link in a sent email; 302 to the original URL
- ``GET /t/o/{token}.gif``: the open pixel of a sent email; a transparent one-pixel GIF
- ``POST /f/{form_id}``: a form submission, form-encoded, with the contact's token in the field
  ``_contact`` or the query parameter ``c``; 200
- ``POST /events``: a ``FlowEvent`` as JSON, for CRM changes from outside, with the bearer token
  ``TRACKING_EVENTS_TOKEN``; 200 with the ingest report
- ``GET /healthz``: liveness; 200

A forged or altered token gets 403, an expired one 410, and neither records anything.

Event ids: every click, open and submission is an event of its own (a random id), so two clicks
a second apart count twice. The same request sent again must not: a client that retries sends an
``Idempotency-Key`` header (forms may carry a ``_submission`` field instead), and the event id is
then derived from it and the token, so the retry is recorded once. ``POST /events`` carries the
caller's own ``event_id``.

A visitor never waits on the engine for long: a click is redirected (and a pixel returned) after
at most ``INGEST_WAIT`` seconds, or at once if the engine fails; the ingest goes on in the
background and the service's shutdown waits for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from temporalio.client import Client

from control.ingest import ingest
from models.crm import Form
from models.database import session
from models.events import EventKind, FlowEvent, IngestReport
from models.settings import Settings, get_settings
from models.tracking_links import TRACKED_SCHEMES, BadToken, ExpiredToken, Purpose, TrackingLinks

log = logging.getLogger("tracking")

DEFAULT_PORT = 8027
INGEST_WAIT = 2.0  # seconds a click or open waits for the engine before answering anyway
MAX_FORM_FIELDS = 100
MAX_FIELD_LENGTH = 10_000
# The smallest transparent GIF: one pixel, one palette entry.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


@dataclass(frozen=True)
class TrackingSettings:
    links: TrackingLinks
    task_queue: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    events_token: str | None = None  # bearer token for POST /events; None: the endpoint is off

    @classmethod
    def from_settings(cls, task_queue: str, settings: Settings | None = None) -> TrackingSettings:
        """``TRACKING_SECRET`` (required), ``TRACKING_BASE_URL`` (default: this service on
        localhost), ``TRACKING_HOST``, ``TRACKING_PORT`` (8027), ``TRACKING_EVENTS_TOKEN``."""
        settings = settings or get_settings()
        if settings.tracking_secret is None:
            raise ValueError("set TRACKING_SECRET: the tracking service signs and checks with it")
        if settings.tracking_base_url is None:
            local = f"http://localhost:{settings.tracking_port}"
            settings = settings.model_copy(update={"tracking_base_url": local})
        links = TrackingLinks.from_settings(settings)
        assert links is not None  # the base URL has a default
        token = settings.tracking_events_token
        return cls(
            links=links,
            task_queue=task_queue,
            host=settings.tracking_host,
            port=settings.tracking_port,
            events_token=token.get_secret_value() if token is not None else None,
        )


def _event_id(kind: str, token: str, request: Request, submission: str | None = None) -> str:
    key = submission or request.headers.get("idempotency-key")
    if not key:
        return f"{kind}/{uuid.uuid4()}"
    digest = hashlib.sha256(f"{token}\n{key}".encode()).hexdigest()[:40]
    return f"{kind}/{digest}"


def _refusal(error: BadToken) -> PlainTextResponse:
    if isinstance(error, ExpiredToken):
        return PlainTextResponse("This link has expired.\n", status_code=410)
    return PlainTextResponse("Not a valid link.\n", status_code=403)


def create_app(engine: Engine, client: Client, settings: TrackingSettings) -> Starlette:
    links = settings.links
    pending: set[asyncio.Task[IngestReport]] = set()

    async def take_in(event: FlowEvent) -> None:
        """Ingest without keeping a visitor waiting more than INGEST_WAIT seconds."""
        task = asyncio.create_task(
            ingest(client, engine, event, task_queue=settings.task_queue),
            name=f"ingest {event.event_id}",
        )
        pending.add(task)
        task.add_done_callback(_finished)
        try:
            await asyncio.wait_for(asyncio.shield(task), INGEST_WAIT)
        except TimeoutError:
            log.warning("event %s: still being delivered, answering anyway", event.event_id)
        except Exception:
            pass  # logged by _finished

    def _finished(task: asyncio.Task[IngestReport]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def click(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claims = links.verify(Purpose.click, token)
        except BadToken as error:
            return _refusal(error)
        url = claims.url
        if url is None or not url.lower().startswith(TRACKED_SCHEMES):
            return PlainTextResponse("Not a valid link.\n", status_code=403)
        await take_in(
            FlowEvent(
                event_id=_event_id("click", token, request),
                kind=EventKind.link_clicked,
                contact_id=claims.contact_id,
                occurred_at=datetime.now(UTC),
                flow_id=claims.flow_id,
                step_id=claims.step_id,
                link=url,
            )
        )
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    async def opened(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claims = links.verify(Purpose.open, token)
        except BadToken as error:
            return _refusal(error)
        await take_in(
            FlowEvent(
                event_id=_event_id("open", token, request),
                kind=EventKind.email_opened,
                contact_id=claims.contact_id,
                occurred_at=datetime.now(UTC),
                flow_id=claims.flow_id,
                step_id=claims.step_id,
            )
        )
        # no-store: every open reaches us, not a cache.
        return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})

    async def submitted(request: Request) -> Response:
        form_id = request.path_params["form_id"]
        async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS) as fields:
            token = str(fields.get("_contact") or request.query_params.get("c") or "")
            try:
                claims = links.verify(Purpose.form, token)
            except BadToken as error:
                return _refusal(error)
            if not await asyncio.to_thread(_form_exists, engine, form_id):
                return PlainTextResponse("No such form.\n", status_code=404)
            data: dict[str, str] = {}
            for name, value in fields.multi_items():
                if name.startswith("_"):
                    continue  # the form's own plumbing: the contact token, the submission id
                if isinstance(value, UploadFile) or len(value) > MAX_FIELD_LENGTH:
                    return PlainTextResponse(f"Field {name!r} is too long.\n", status_code=413)
                # A repeated field (checkboxes) keeps every value.
                data[name] = f"{data[name]},{value}" if name in data else value
            submission = fields.get("_submission")
        event = FlowEvent(
            event_id=_event_id(
                f"form/{form_id}", token, request, str(submission) if submission else None
            ),
            kind=EventKind.form_submitted,
            contact_id=claims.contact_id,
            occurred_at=datetime.now(UTC),
            form_id=form_id,
            data=data,
        )
        try:
            await ingest(client, engine, event, task_queue=settings.task_queue)
        except Exception:
            # Not recorded, or not delivered: the form should be sent again.
            log.exception("form %s: event %s not taken in", form_id, event.event_id)
            return PlainTextResponse("Please try again in a moment.\n", status_code=503)
        return PlainTextResponse("Thank you.\n")

    async def events(request: Request) -> Response:
        if settings.events_token is None:
            return PlainTextResponse("POST /events is off: no TRACKING_EVENTS_TOKEN\n", 403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.events_token}".encode()):
            return PlainTextResponse(
                "Bad or missing bearer token.\n", 401, headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            event = FlowEvent.model_validate_json(await request.body())
        except ValidationError as error:
            problems = error.errors(include_url=False, include_context=False, include_input=False)
            return JSONResponse({"detail": problems}, status_code=422)
        try:
            report = await ingest(client, engine, event, task_queue=settings.task_queue)
        except Exception:
            # Retrying the same event id finishes what this attempt left undone.
            log.exception("event %s not taken in", event.event_id)
            return PlainTextResponse("The engine is unavailable: retry.\n", status_code=503)
        return JSONResponse(report.model_dump(mode="json"))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Stopping: let ingests that outlived their request finish.
        if pending:
            await asyncio.wait(set(pending), timeout=10)

    return Starlette(
        routes=[
            Route("/t/c/{token}", click, methods=["GET"]),
            Route("/t/o/{token}.gif", opened, methods=["GET"]),
            Route("/f/{form_id:int}", submitted, methods=["POST"]),
            Route("/events", events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _form_exists(engine: Engine, form_id: int) -> bool:
    with session(engine) as db:
        return db.get(Form, form_id) is not None
