"""The console's routes. Every page but sign-in needs a signed-in user (``console.web.guarded``);
pages that change flows need a marketer or an admin, the users page an admin."""

from __future__ import annotations

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from temporalio.client import Client

from console import accounts, editor, flows, participants
from console.web import (
    HERE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Console,
    ConsoleSettings,
    for_admins,
    for_changes,
    guarded,
)


async def home(request: Request) -> Response:
    return RedirectResponse("/flows", status_code=303)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(engine: Engine, client: Client, settings: ConsoleSettings) -> Starlette:
    flow = "/flows/{flow_id}"
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/healthz", healthz),
            Route("/login", accounts.login, methods=["GET", "POST"]),
            Route("/logout", accounts.logout, methods=["POST"]),
            Route("/users", for_admins(accounts.users), methods=["GET", "POST"]),
            Route(
                "/users/{user_id:int}/{change}",
                for_admins(accounts.change_user),
                methods=["POST"],
            ),
            Route("/flows", guarded(flows.flows_list)),
            Route("/flows", for_changes(flows.new_flow), methods=["POST"]),
            Route(flow, guarded(flows.flow_page)),
            Route(flow + "/diff", guarded(flows.diff)),
            Route(flow + "/versions/{version:int}.json", guarded(flows.document)),
            Route(flow + "/enroll", for_changes(flows.enroll_contacts), methods=["POST"]),
            Route(flow + "/dry-run", guarded(flows.simulate)),
            Route(flow + "/dry-run", for_changes(flows.simulate), methods=["POST"]),
            Route(flow + "/edit", for_changes(editor.editor)),
            Route(flow + "/check", for_changes(editor.check), methods=["POST"]),
            Route(flow + "/versions", for_changes(editor.save), methods=["POST"]),
            Route(flow + "/participants", guarded(participants.participants)),
            Route(flow + "/participants/{participant_id}", guarded(participants.participant)),
            Route("/outbox", guarded(participants.outbox)),
            Route("/outbox/mail/{key}", guarded(participants.outbox_mail)),
            Route("/outbox/mail/{key}/html", guarded(participants.outbox_mail_html)),
            # Last: "/flows/x/edit" is not an action.
            Route(flow + "/{action}", for_changes(flows.lifecycle), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret,
                session_cookie=SESSION_COOKIE,
                max_age=SESSION_SECONDS,
                same_site="strict",
                https_only=settings.secure_cookies,
            )
        ],
    )
    app.state.console = Console(engine, client, settings)
    return app
