"""What every console page shares: its settings, who is signed in, the CSRF check, templates.

A page is an ``async def page(request, user) -> Response`` wrapped by ``guarded``: a visitor who
is not signed in is sent to the sign-in page (or gets 401 for anything but a GET); every request
that may change something (any method but GET and HEAD) must carry the session's CSRF token, in
the form field ``csrf`` or the ``X-CSRF-Token`` header, or it gets 403 and nothing is done; a
page that needs a role the user lacks gets 403.

Sessions are Starlette's signed cookies (itsdangerous, keyed with ``CONSOLE_SECRET``): they hold
the user id, a fingerprint of the password hash (a new password signs the old sessions out) and
the CSRF token.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from temporalio.client import Client

from models.accounts import Role, SignInLimits, User
from models.database import session
from models.settings import Settings, get_settings
from models.tracking_links import check_secret

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "console_session"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD"})

templates = Jinja2Templates(directory=str(HERE / "templates"))


def _local(moment: datetime | None, zone: str = "UTC") -> str:
    if moment is None:
        return ""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


templates.env.filters["local"] = _local
templates.env.filters["percent"] = _percent


@dataclass(frozen=True)
class ConsoleSettings:
    secret: str
    task_queue: str
    temporal_ui_url: str
    namespace: str = "default"
    host: str = "127.0.0.1"
    port: int = 8029
    outbox: Path | None = None  # the dev stack's local peers' folder: the outbox page
    secure_cookies: bool = False  # behind TLS: the session cookie is sent over HTTPS only

    @classmethod
    def from_settings(
        cls, task_queue: str, settings: Settings | None = None, outbox: Path | None = None
    ) -> ConsoleSettings:
        """``CONSOLE_SECRET`` (required, strong), ``CONSOLE_HOST``, ``CONSOLE_PORT``,
        ``TEMPORAL_UI_URL`` and ``TEMPORAL_NAMESPACE``."""
        settings = settings or get_settings()
        if settings.console_secret is None:
            raise ValueError("set CONSOLE_SECRET: the console signs its sessions with it")
        secret = check_secret("CONSOLE_SECRET", settings.console_secret.get_secret_value())
        ui = settings.temporal_ui_url or f"http://localhost:{settings.temporal_ui_port}"
        return cls(
            secret=secret,
            task_queue=task_queue,
            temporal_ui_url=ui.rstrip("/"),
            namespace=settings.temporal_namespace,
            host=settings.console_host,
            port=settings.console_port,
            outbox=outbox,
        )


@dataclass(frozen=True)
class Console:
    """The app's state: the database, Temporal, the settings, the failed sign-ins."""

    engine: Engine
    client: Client
    settings: ConsoleSettings
    sign_in_limits: SignInLimits = field(default_factory=SignInLimits)


def console(request: Request) -> Console:
    state: Console = request.app.state.console
    return state


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def csrf_ok(request: Request) -> bool:
    """The request carries the session's CSRF token (header, or form field ``csrf``)."""
    expected = request.session.get("csrf")
    if not isinstance(expected, str):
        return False
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get("csrf")
        given = value if isinstance(value, str) else None
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def fingerprint(user: User) -> str:
    return user.password_hash[-16:]


def sign_in(request: Request, user: User) -> None:
    request.session.clear()  # a new session: nothing of the visitor's carries over
    request.session.update(
        {"uid": user.id, "key": fingerprint(user), "csrf": secrets.token_urlsafe(32)}
    )


async def signed_in(request: Request) -> User | None:
    uid = request.session.get("uid")
    if not isinstance(uid, int):
        return None

    def look_up() -> User | None:
        with session(console(request).engine) as db:
            return db.get(User, uid)

    user = await asyncio.to_thread(look_up)
    if user is None or not user.active or request.session.get("key") != fingerprint(user):
        return None
    return user


def flash(request: Request, message: str, level: str = "info") -> None:
    request.session.setdefault("flash", []).append([level, message])


def render(
    request: Request, user: User | None, name: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    messages = request.session.pop("flash", [])
    role = Role(user.role) if user else None
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": user,
            "role": role,
            "can_change": role is not None and role.can_change_flows,
            "csrf": csrf_token(request),
            "messages": messages,
            "temporal_ui": console(request).settings.temporal_ui_url,
            "namespace": console(request).settings.namespace,
            "has_outbox": console(request).settings.outbox is not None,
            **context,
        },
        status_code=status_code,
    )


Page = Callable[[Request, User], Awaitable[Response]]


def guarded(
    page: Page, allowed: Callable[[Role], bool] | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """The page for a signed-in user with the role ``allowed`` asks for; CSRF-checked when the
    request may change something."""

    async def endpoint(request: Request) -> Response:
        user = await signed_in(request)
        if user is None:
            if request.method in SAFE_METHODS:
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            return HTMLResponse("sign in first", status_code=401)
        if request.method not in SAFE_METHODS and not await csrf_ok(request):
            return HTMLResponse("refused: the form's CSRF token is missing or wrong", 403)
        if allowed is not None and not allowed(Role(user.role)):
            return render(request, user, "refused.html", status_code=403)
        return await page(request, user)

    return endpoint


def for_changes(page: Page) -> Callable[[Request], Awaitable[Response]]:
    """A page that changes flows: marketers and admins."""
    return guarded(page, lambda role: role.can_change_flows)


def for_admins(page: Page) -> Callable[[Request], Awaitable[Response]]:
    return guarded(page, lambda role: role.can_manage_users)
