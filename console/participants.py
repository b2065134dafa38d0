"""A flow's participants a page at a time, one participant's story, and the dev stack's outbox."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from console.web import console, render
from control.flows import UnknownFlow, load_flow
from models.accounts import User
from models.engine import ParticipantStatus
from models.participant import ParticipantState
from peers.smtp_inbox import read_inbox, read_message
from peers.twilio_api import read_sms_outbox
from reports.participants import participant_detail, participant_page
from workflows.participant import ParticipantWorkflow

STATE_TIMEOUT_SECONDS = 3


async def participants(request: Request, user: User) -> Response:
    engine = console(request).engine
    try:
        stored = load_flow(engine, request.path_params["flow_id"])
    except UnknownFlow as missing:
        raise HTTPException(404, str(missing)) from None
    step = request.query_params.get("step") or None
    status = request.query_params.get("status") or None
    number = request.query_params.get("page", "1")
    found = await asyncio.to_thread(
        participant_page,
        engine,
        stored.flow.id,
        step=step,
        status=status,
        page=int(number) if number.isdigit() else 1,
    )
    filters = {k: v for k, v in (("step", step), ("status", status)) if v}
    return render(
        request,
        user,
        "participants.html",
        flow=stored.flow,
        found=found,
        step=step,
        status=status,
        statuses=[s.value for s in ParticipantStatus],
        link=lambda page: "?" + urlencode({**filters, "page": page}),
    )


async def _state(request: Request, workflow_id: str) -> ParticipantState | None:
    """What the running participant says of itself (its trail, its wait), when a worker answers."""
    handle = console(request).client.get_workflow_handle_for(ParticipantWorkflow.run, workflow_id)
    try:
        return await asyncio.wait_for(
            handle.query(ParticipantWorkflow.current_state), STATE_TIMEOUT_SECONDS
        )
    except (WorkflowQueryFailedError, RPCError, TimeoutError):
        return None


def _outbox_keys(folder: Path | None) -> dict[str, str]:
    """Message-ID (email) or sid (SMS) -> the outbox entry that shows it."""
    if folder is None:
        return {}
    keys = {m.message_id: f"/outbox/mail/{m.key}" for m in read_inbox(folder / "mail")}
    for text in read_sms_outbox(folder / "sms.jsonl"):
        keys[str(text.get("sid", ""))] = f"/outbox#sms-{text.get('sid', '')}"
    return keys


async def participant(request: Request, user: User) -> Response:
    state = console(request)
    try:
        stored = load_flow(state.engine, request.path_params["flow_id"])
    except UnknownFlow as missing:
        raise HTTPException(404, str(missing)) from None
    detail = await asyncio.to_thread(
        participant_detail, state.engine, request.path_params["participant_id"]
    )
    if detail is None or detail.row.workflow_id.split("-contact-")[0] != f"flow-{stored.flow.id}":
        raise HTTPException(404, "no such participant in this flow")
    live = await _state(request, detail.row.workflow_id)
    labels = {step.id: step.label for step in stored.flow.steps}
    outbox = await asyncio.to_thread(_outbox_keys, state.settings.outbox)
    return render(
        request,
        user,
        "participant.html",
        flow=stored.flow,
        detail=detail,
        live=live,
        labels=labels,
        outbox=outbox,
        zone=stored.flow.time_zone,
    )


async def outbox(request: Request, user: User) -> Response:
    """What the dev stack's local SMTP inbox and SMS endpoint received, newest first."""
    folder = console(request).settings.outbox
    if folder is None:
        raise HTTPException(404, "no outbox: the local peers run with the dev stack only")
    mails, texts = await asyncio.to_thread(
        lambda: (read_inbox(folder / "mail"), read_sms_outbox(folder / "sms.jsonl"))
    )
    return render(
        request,
        user,
        "outbox.html",
        mails=list(reversed(mails)),
        texts=list(reversed(texts)),
    )


async def outbox_mail(request: Request, user: User) -> Response:
    folder = console(request).settings.outbox
    if folder is None:
        raise HTTPException(404, "no outbox")
    found = await asyncio.to_thread(read_message, folder / "mail", request.path_params["key"])
    if found is None:
        raise HTTPException(404, "no such message")
    return render(request, user, "mail.html", mail=found)


async def outbox_mail_html(request: Request, user: User) -> Response:
    """An email's HTML as its own document, which the mail page frames in a sandbox (no scripts,
    no access to the console), as a mail client shows it."""
    folder = console(request).settings.outbox
    if folder is None:
        raise HTTPException(404, "no outbox")
    found = await asyncio.to_thread(read_message, folder / "mail", request.path_params["key"])
    if found is None or found.html is None:
        raise HTTPException(404, "no HTML body")
    return HTMLResponse(
        found.html,
        headers={
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src * data:; "
            "style-src 'unsafe-inline'"
        },
    )
