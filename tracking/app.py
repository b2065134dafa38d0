"""The tracking service's HTTP endpoints (Starlette).

- ``GET /t/c/{token}``: a click on a link in a sent email; 302 to the original URL
- ``GET /t/o/{token}.gif``: the open pixel of a sent email; a transparent one-pixel GIF
- ``POST /f/{form_id}``: a form submission, form-encoded, with the contact's token in the field
  ``_contact`` or the query parameter ``c``; 200
- ``POST /events``: a ``FlowEvent`` as JSON, for CRM changes from outside, with the bearer token
  ``TRACKING_EVENTS_TOKEN``; 200 with the ingest report
- ``GET /healthz``: liveness; 200

A forged, altered or malformed token gets 403, an expired one 410, and neither records anything.
Whatever comes from outside is bounded before it is read: a body over ``TRACKING_MAX_BODY_BYTES``
gets 413 (``tracking.limits``), a form's token in the query is checked before its body is read,
a form's fields are limited in number, name and value length and total size (413), and one token
used more than ``TRACKING_RATE_LIMIT`` times a minute gets 429.

Event ids: the clicks and opens of one token within ``TRACKING_REPEAT_SECONDS`` are one event,
whoever sends them and however often: the id is derived from the token and the time window, so
a replayed link costs a participant at most one event per window. A form submission is an event
of its own (a random id) unless the client names it: an ``Idempotency-Key`` header or a
``_submission`` field makes a retried submission one event. ``POST /events`` carries the caller's
own ``event_id``.

A visitor never waits on the engine for long, and not at all while it is unreachable: clicks,
opens and forms are recorded first and then delivered in the background (``tracking.delivery``),
which also hands over later what could not be delivered at once. The service starts and serves
before Temporal answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from temporalio.client import Client

from control.ingest import ingest
from models.crm import Form
from models.database import session
from models.events import EventKind, FlowEvent
from models.settings import Settings, get_settings
from models.tracking_links import (
    TRACKED_SCHEMES,
    BadToken,
    Claims,
    ExpiredToken,
    Purpose,
    TrackingLinks,
    check_secret,
)
from tracking.delivery import Delivery
from tracking.limits import RateLimit, RequestLimit

log = logging.getLogger("tracking")

DEFAULT_PORT = 8027
INGEST_WAIT = 2.0  # seconds a visitor waits for the engine before getting the answer anyway
BODY_READ_SECONDS = 15.0  # a body must have arrived whole this long after the request began
MAX_HEADER_BYTES = 16 * 1024
MAX_FORM_FIELDS = 100
MAX_FIELD_NAME = 100
MAX_FIELD_LENGTH = 10_000  # one field's value, and a repeated field's values joined
MAX_FORM_DATA = 20_000  # characters of names and values of a whole submission, as stored
MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
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
    max_body_bytes: int = 65_536
    repeat_seconds: int = 3_600
    rate_limit: int = 30  # requests per token and minute
    body_read_seconds: float = BODY_READ_SECONDS

    @classmethod
    def from_settings(cls, task_queue: str, settings: Settings | None = None) -> TrackingSettings:
        """``TRACKING_SECRET`` (required), ``TRACKING_BASE_URL`` (default: this service on
        localhost), ``TRACKING_HOST``, ``TRACKING_PORT`` (8027), ``TRACKING_EVENTS_TOKEN`` and
        the limits. The secret and the events token must be strong (``check_secret``)."""
        settings = settings or get_settings()
        if settings.tracking_secret is None:
            raise ValueError("set TRACKING_SECRET: the tracking service signs and checks with it")
        check_secret("TRACKING_SECRET", settings.tracking_secret.get_secret_value())
        if settings.tracking_base_url is None:
            local = f"http://localhost:{settings.tracking_port}"
            settings = settings.model_copy(update={"tracking_base_url": local})
        links = TrackingLinks.from_settings(settings)
        assert links is not None  # the base URL has a default
        token = settings.tracking_events_token
        events_token = None
        if token is not None:
            events_token = check_secret("TRACKING_EVENTS_TOKEN", token.get_secret_value())
        return cls(
            links=links,
            task_queue=task_queue,
            host=settings.tracking_host,
            port=settings.tracking_port,
            events_token=events_token,
            max_body_bytes=settings.tracking_max_body_bytes,
            repeat_seconds=settings.tracking_repeat_seconds,
            rate_limit=settings.tracking_rate_limit,
        )


def _repeat_id(kind: str, token: str, window_seconds: int) -> str:
    """One id per token and time window: its clicks (or opens) in the window are one event."""
    window = int(time.time() // max(window_seconds, 1))
    digest = hashlib.sha256(f"{token}\n{window}".encode()).hexdigest()[:40]
    return f"{kind}/{digest}"


def _submission_id(form_id: int, token: str, key: str | None) -> str:
    if not key:
        return f"form/{form_id}/{uuid.uuid4()}"
    digest = hashlib.sha256(f"{token}\n{key}".encode()).hexdigest()[:40]
    return f"form/{form_id}/{digest}"


def _refusal(error: BadToken) -> PlainTextResponse:
    if isinstance(error, ExpiredToken):
        return PlainTextResponse("This link has expired.\n", status_code=410)
    return PlainTextResponse("Not a valid link.\n", status_code=403)


def _too_many() -> PlainTextResponse:
    text = "Too many requests: try again in a minute.\n"
    return PlainTextResponse(text, status_code=429, headers={"Retry-After": "60"})


def _form_data(fields: FormData) -> dict[str, str]:
    """The submitted fields as stored, within the limits (413 otherwise). A repeated field
    (checkboxes) keeps every value, comma-separated, and counts as one field."""
    data: dict[str, str] = {}
    for name, value in fields.multi_items():
        if name.startswith("_"):
            continue  # the form's own plumbing: the contact token, the submission id
        if isinstance(value, UploadFile):
            raise HTTPException(413, "Files are not accepted.\n")
        if len(name) > MAX_FIELD_NAME:
            raise HTTPException(413, f"A field name is longer than {MAX_FIELD_NAME} characters.\n")
        joined = f"{data[name]},{value}" if name in data else value
        if len(joined) > MAX_FIELD_LENGTH:
            raise HTTPException(413, f"Field {name!r} is too long.\n")
        data[name] = joined
    _check_data(data)
    return data


def _check_data(data: dict[str, str]) -> None:
    if len(data) > MAX_FORM_FIELDS or sum(len(k) + len(v) for k, v in data.items()) > MAX_FORM_DATA:
        limits = f"at most {MAX_FORM_FIELDS} fields and {MAX_FORM_DATA} characters"
        raise HTTPException(413, f"Too much data: {limits}.\n")


def create_app(
    engine: Engine,
    client: Client | Callable[[], Awaitable[Client]],
    settings: TrackingSettings,
) -> Starlette:
    """The app. ``client`` is a Temporal client, or how to get one: then the app serves at once
    and connects in the background, recording events until Temporal answers."""
    links = settings.links
    delivery = Delivery(
        engine, client if isinstance(client, Client) else None, task_queue=settings.task_queue
    )
    rate = RateLimit(settings.rate_limit)

    def verified(purpose: Purpose, token: str) -> Claims:
        """The token's claims, or the refusal raised: 403/410, or 429 when it came too often."""
        try:
            claims = links.verify(purpose, token)
        except BadToken as error:
            raise _Refused(_refusal(error)) from None
        if not rate.allow(token):
            raise _Refused(_too_many())
        return claims

    async def recorded(event: FlowEvent) -> None:
        """Record and deliver without keeping a visitor waiting: a database failure is logged,
        and the visitor gets the redirect or the pixel all the same."""
        try:
            await delivery.take_in(event, wait=INGEST_WAIT)
        except Exception:
            log.exception("event %s not recorded", event.event_id)

    async def click(request: Request) -> Response:
        token = request.path_params["token"]
        claims = verified(Purpose.click, token)
        url = claims.url
        if url is None or not url.lower().startswith(TRACKED_SCHEMES):
            return PlainTextResponse("Not a valid link.\n", status_code=403)
        await recorded(
            FlowEvent(
                event_id=_repeat_id("click", token, settings.repeat_seconds),
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
        claims = verified(Purpose.open, token)
        await recorded(
            FlowEvent(
                event_id=_repeat_id("open", token, settings.repeat_seconds),
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
        form_id: int = request.path_params["form_id"]
        no_such_form = PlainTextResponse("No such form.\n", status_code=404)
        # A token in the query is checked before a byte of the body is read; nothing is looked
        # up in the database before a token is.
        token = request.query_params.get("c") or ""
        claims = verified(Purpose.form, token) if token else None
        if claims is not None and not await _form_exists(engine, form_id):
            return no_such_form
        async with request.form(
            max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_LENGTH
        ) as fields:
            if claims is None:
                token = str(fields.get("_contact") or "")
                claims = verified(Purpose.form, token)
                if not await _form_exists(engine, form_id):
                    return no_such_form
            data = _form_data(fields)
            submission = fields.get("_submission")
        key = str(submission) if submission else request.headers.get("idempotency-key")
        event = FlowEvent(
            event_id=_submission_id(form_id, token, key),
            kind=EventKind.form_submitted,
            contact_id=claims.contact_id,
            occurred_at=datetime.now(UTC),
            form_id=form_id,
            data=data,
        )
        try:
            await delivery.take_in(event, wait=INGEST_WAIT)
        except Exception:
            # Not recorded: the form should be sent again.
            log.exception("form %s: event %s not recorded", form_id, event.event_id)
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
        _check_data(event.data)
        if delivery.client is None:
            return PlainTextResponse("The engine is unavailable: retry.\n", status_code=503)
        try:
            report = await ingest(delivery.client, engine, event, task_queue=settings.task_queue)
        except Exception:
            # Retrying the same event id finishes what this attempt left undone.
            log.exception("event %s not taken in", event.event_id)
            return PlainTextResponse("The engine is unavailable: retry.\n", status_code=503)
        return JSONResponse(report.model_dump(mode="json"))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        background = [asyncio.create_task(delivery.redeliver(), name="redelivery")]
        if not isinstance(client, Client):
            background.append(asyncio.create_task(delivery.connect(client), name="connecting"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Stopping: let deliveries that outlived their request finish.
            await delivery.finish(timeout=10)

    return Starlette(
        routes=[
            Route("/t/c/{token}", click, methods=["GET"]),
            Route("/t/o/{token}.gif", opened, methods=["GET"]),
            Route("/f/{form_id:int}", submitted, methods=["POST"]),
            Route("/events", events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                RequestLimit,
                max_header_bytes=MAX_HEADER_BYTES,
                max_bytes=settings.max_body_bytes,
                read_seconds=settings.body_read_seconds,
            )
        ],
        exception_handlers={_Refused: _refused},
        lifespan=lifespan,
    )


class _Refused(Exception):
    """A request turned away with this response (a bad token, too many requests)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def _refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, _Refused)
    return error.response


async def _form_exists(engine: Engine, form_id: int) -> bool:
    if not 0 < form_id <= MAX_ID:
        return False

    def look_up() -> bool:
        with session(engine) as db:
            return db.get(Form, form_id) is not None

    return await asyncio.to_thread(look_up)
