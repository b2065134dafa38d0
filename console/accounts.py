"""Signing in and out, and the admins' page of users."""

from __future__ import annotations

import asyncio

from sqlmodel import col, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from console.web import console, csrf_ok, flash, render, sign_in
from models.accounts import AccountError, Role, User, add_user, authenticate
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

    def check() -> User | None:
        with session(console(request).engine) as db:
            return authenticate(db, email, password)

    user = await asyncio.to_thread(check)
    if user is None:
        flash(request, "That email and password do not match a user.", "error")
        return render(request, None, "login.html", status_code=401, next=target, email=email)
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
