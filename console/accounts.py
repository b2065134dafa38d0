"""Signing in and out, and the admins' page of users: add one, change a role, set a new
password, deactivate or reactivate."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from console.web import console, csrf_ok, flash, render, sign_in
from models.accounts import (
    AccountError,
    Role,
    User,
    add_user,
    authenticate,
    change_role,
    reset_password,
    set_active,
)
from models.database import session


def _next_page(value: object) -> str:
    """Where to go after signing in: a path on this site only (never ``//elsewhere``)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//"):
        return value
    return "/flows"


async def login(request: Request) -> Response:
    if request.method == "GET":
        return render(
            request, None, "login.html", next=_next_page(request.query_params.get("next"))
        )
    if not await csrf_ok(request):
        return HTMLResponse("refused: the form's CSRF token is missing or wrong", 403)
    form = await request.form()
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    target = _next_page(form.get("next"))

    state = console(request)
    address = request.client.host if request.client else ""
    wait = state.sign_in_limits.refused(email, address, time.monotonic())
    if wait is not None:
        minutes = math.ceil(wait / 60)
        flash(
            request,
            f"Too many failed sign-ins for {email} from this address: try again in "
            f"{minutes} minute{'s' if minutes != 1 else ''}.",
            "error",
        )
        return render(request, None, "login.html", status_code=429, next=target, email=email)

    def check() -> User | None:
        with session(state.engine) as db:
            return authenticate(db, email, password)

    user = await asyncio.to_thread(check)
    if user is None:
        state.sign_in_limits.failed(email, address, time.monotonic())
        flash(request, "That email and password do not match an active user.", "error")
        return render(request, None, "login.html", status_code=401, next=target, email=email)
    state.sign_in_limits.succeeded(email, address)
    sign_in(request, user)
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    if await csrf_ok(request):
        request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def users(request: Request, user: User) -> Response:
    engine = console(request).engine
    if request.method == "POST":
        form = await request.form()

        def add() -> str:
            with session(engine) as db:
                added = add_user(
                    db,
                    str(form.get("email", "")),
                    str(form.get("password", "")),
                    Role(str(form.get("role", "viewer"))),
                    str(form.get("name", "")),
                )
                return added.email

        try:
            email = await asyncio.to_thread(add)
        except (AccountError, ValueError) as problem:
            flash(request, str(problem), "error")
        else:
            flash(request, f"Added {email}.")
        return RedirectResponse("/users", status_code=303)

    def everyone() -> list[User]:
        with session(engine) as db:
            return list(db.exec(select(User).order_by(col(User.email))).all())

    return render(
        request, user, "users.html", users=await asyncio.to_thread(everyone), roles=list(Role)
    )


async def change_user(request: Request, user: User) -> Response:
    """``/users/{id}/role``, ``/password``, ``/deactivate`` or ``/reactivate``."""
    form = await request.form()
    user_id: int = request.path_params["user_id"]
    change = request.path_params["change"]
    changes: dict[str, tuple[Callable[[Session], User], str]] = {
        "role": (
            lambda db: change_role(db, user_id, Role(str(form.get("role", "")))),
            "{email} is now {role}.",
        ),
        "password": (
            lambda db: reset_password(db, user_id, str(form.get("password", ""))),
            "{email} has a new password; their sessions have ended.",
        ),
        "deactivate": (
            lambda db: set_active(db, user_id, False),
            "{email} is deactivated: they cannot sign in, and their sessions have ended.",
        ),
        "reactivate": (lambda db: set_active(db, user_id, True), "{email} can sign in again."),
    }
    if change not in changes:
        return HTMLResponse(f"no change {change!r}", status_code=404)
    apply, done = changes[change]

    def run() -> str:
        with session(console(request).engine) as db:
            changed = apply(db)
            return done.format(email=changed.email, role=changed.role)

    try:
        flash(request, await asyncio.to_thread(run))
    except (AccountError, ValueError) as problem:
        flash(request, str(problem), "error")
    return RedirectResponse("/users", status_code=303)
