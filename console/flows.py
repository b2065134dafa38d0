"""The flows list and a flow's page: figures, the diagram with live counts, statistics, versions
and their differences, and the lifecycle buttons, which go through ``control.lifecycle`` as the
command line does."""

from __future__ import annotations

import asyncio
import difflib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import graphviz
from markupsafe import Markup
from pydantic import ValidationError
from sqlmodel import col, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from console.web import console, flash, render
from control.dry_run import DryRunStuck, PlannedEvent, UnknownContact, dry_run
from control.enrollment import enroll, selection_members
from control.flows import (
    FlowRejected,
    UnknownFlow,
    check_document,
    deploy_flow,
    load_flow,
    read_document,
)
from control.lifecycle import (
    LifecycleError,
    delete_flow,
    end_flow,
    pause_flow,
    resume_flow,
    run_flow,
)
from models.accounts import User
from models.crm import Selection, action_catalogue
from models.database import PROJECT_ROOT, session
from models.engine import FlowVersion, ParticipantStatus
from models.overlaps import overlaps
from reports import diagram
from reports.participants import active_participants, flow_summaries
from reports.statistics import flow_statistics

TEMPLATES = {"blank": None, "welcome": "welcome.json", "every-step": "every-step.json"}
ACTIONS = ("run", "pause", "resume", "end", "delete")
_SVG_START = re.compile(r"<svg\b")
_SVG_SIZE = re.compile(r'\s(?:width|height)="[0-9.]+pt"')


async def flows_list(request: Request, user: User) -> Response:
    summaries = await asyncio.to_thread(flow_summaries, console(request).engine)
    return render(request, user, "flows.html", flows=summaries, templates=list(TEMPLATES))


def _template_document(template: str, flow_id: str, name: str) -> dict[str, Any]:
    file = TEMPLATES.get(template)
    if file is None:
        document: dict[str, Any] = {
            "start": "done",
            "steps": [{"id": "done", "type": "finish"}],
        }
    else:
        document = read_document(PROJECT_ROOT / "flows" / file)
    return {**document, "id": flow_id, "name": name}


async def new_flow(request: Request, user: User) -> Response:
    """A first version made from a template; then the step editor."""
    form = await request.form()
    flow_id, name = str(form.get("id", "")).strip(), str(form.get("name", "")).strip()
    engine = console(request).engine
    try:
        load_flow(engine, flow_id)
    except UnknownFlow:
        pass
    else:
        flash(request, f"There is already a flow {flow_id!r}.", "error")
        return RedirectResponse("/flows", status_code=303)
    document = _template_document(str(form.get("template", "blank")), flow_id, name)
    try:
        await asyncio.to_thread(deploy_flow, engine, document)
    except FlowRejected as refused:
        flash(request, str(refused), "error")
        return RedirectResponse("/flows", status_code=303)
    return RedirectResponse(f"/flows/{quote(flow_id)}/edit", status_code=303)


def _stored(request: Request, version: int | None = None) -> Any:
    try:
        return load_flow(console(request).engine, request.path_params["flow_id"], version)
    except UnknownFlow as missing:
        raise HTTPException(404, str(missing)) from None


@dataclass(frozen=True)
class Overlap:
    """A step that does what a form or link the flow uses already does, or its opposite."""

    step_id: str
    step_label: str
    field: str
    message: str


def _diagram_svg(stored: Any, counts: diagram.StepCounts) -> str:
    """The Graphviz drawing with each step linked to its participants."""
    flow = stored.flow
    note = diagram.live_note(flow)
    graph = diagram.to_graphviz(flow, stored.version, counts, note)
    graph.attr(dpi="72")  # an SVG's viewBox is in points: other resolutions crop the drawing
    for step in flow.steps:  # a second statement for a node adds to its attributes
        graph.node(
            step.id,
            URL=f"/flows/{quote(flow.id)}/participants?step={quote(step.id)}",
            target="_top",
            tooltip=f"participants at {step.label}",
        )
    try:
        svg = graph.pipe(format="svg").decode("utf-8")
    except graphviz.ExecutableNotFound:
        return ""
    found = _SVG_START.search(svg)
    if found is None:
        return ""
    # Without its fixed size in points the drawing scales to the page (it keeps its viewBox).
    return _SVG_SIZE.sub("", svg[found.start() :], count=2)


async def flow_page(request: Request, user: User) -> Response:
    engine = console(request).engine
    stored = _stored(request)
    flow_id = stored.flow.id

    def gather() -> dict[str, Any]:
        with session(engine) as db:
            versions = db.exec(
                select(FlowVersion.version, FlowVersion.created_at)
                .where(FlowVersion.flow_id == flow_id)
                .order_by(col(FlowVersion.version).desc())
            ).all()
            selections = db.exec(select(Selection).order_by(col(Selection.name))).all()
            catalogue = action_catalogue(db)
        counts = diagram.StepCounts(
            at=diagram.participants_at(engine, flow_id),
            through=diagram.participants_through(engine, flow_id),
        )
        document = stored.flow.model_dump(mode="json", by_alias=True)
        labels = {step.id: step.label for step in stored.flow.steps}
        return {
            "versions": versions,
            "selections": selections,
            "svg": Markup(_diagram_svg(stored, counts)),
            "stats": flow_statistics(engine, stored.flow, stored.version, per_day=False),
            # Overlaps have a section of their own: not among the other warnings.
            "report": check_document(engine, document),
            "overlaps": [
                # No step: a form's or link's action that is not valid, skipped when it runs.
                Overlap(step_id or "", labels.get(step_id, step_id) or "(none)", field, message)
                for step_id, field, message in overlaps(stored.flow, catalogue)
            ],
            "active": active_participants(engine, flow_id),
        }

    return render(
        request,
        user,
        "flow.html",
        stored=stored,
        flow=stored.flow,
        statuses=[s.value for s in ParticipantStatus],
        **await asyncio.to_thread(gather),
    )


async def lifecycle(request: Request, user: User) -> Response:
    """Run, pause, resume, end or delete: ``control.lifecycle``, as ``starter.py`` does it."""
    state = console(request)
    flow_id, action = request.path_params["flow_id"], request.path_params["action"]
    page = f"/flows/{quote(flow_id)}"
    try:
        if action == "run":
            await asyncio.to_thread(run_flow, state.engine, flow_id)
            flash(request, "Running: triggers are on and contacts may be enrolled.")
        elif action == "pause":
            paused = await pause_flow(state.client, state.engine, flow_id)
            flash(request, f"Paused: {paused.reached} participants frozen where they are.")
        elif action == "resume":
            resumed = await resume_flow(state.client, state.engine, flow_id)
            kept = sum(resumed.kept.values())
            flash(
                request,
                f"Resumed {resumed.reached} participants: {resumed.took} on version "
                f"{resumed.version}, {kept} kept the version they had.",
            )
        elif action == "end":
            ended = await end_flow(state.client, state.engine, flow_id)
            flash(request, f"Ended: {ended.reached} active participants cancelled.")
        elif action == "delete":
            await asyncio.to_thread(delete_flow, state.engine, flow_id)
            flash(request, f"Deleted {flow_id}.")
            return RedirectResponse("/flows", status_code=303)
        else:
            raise HTTPException(404, f"no action {action!r}")
    except (LifecycleError, UnknownFlow) as refused:
        flash(request, str(refused), "error")
    return RedirectResponse(page, status_code=303)


def _contact_ids(text: str) -> list[int]:
    ids = [int(part) for part in re.split(r"[\s,]+", text.strip()) if part]
    if any(i <= 0 for i in ids):
        raise ValueError("contact ids are positive numbers")
    return ids


async def enroll_contacts(request: Request, user: User) -> Response:
    state = console(request)
    flow_id = request.path_params["flow_id"]
    form = await request.form()
    try:
        contacts = _contact_ids(str(form.get("contacts", "")))
    except ValueError:
        flash(request, "Contacts: ids separated by spaces or commas, e.g. 1 2 3.", "error")
        return RedirectResponse(f"/flows/{quote(flow_id)}", status_code=303)
    selection = str(form.get("selection", ""))
    if selection.isdigit():
        contacts += await asyncio.to_thread(selection_members, state.engine, int(selection))
    if not contacts:
        flash(request, "Name contacts or choose a selection.", "error")
        return RedirectResponse(f"/flows/{quote(flow_id)}", status_code=303)
    try:
        report = await enroll(
            state.client, state.engine, flow_id, contacts, task_queue=state.settings.task_queue
        )
    except (FlowRejected, UnknownFlow) as refused:
        flash(request, str(refused), "error")
    else:
        reasons = sorted(set(report.refused.values()))
        not_enrolled = f"; {len(report.refused)} not ({', '.join(reasons)})" if reasons else ""
        flash(request, f"Enrolled {len(report.enrolled)} of {len(contacts)}{not_enrolled}.")
    return RedirectResponse(f"/flows/{quote(flow_id)}", status_code=303)


def _lines(stored: Any) -> list[str]:
    document = stored.flow.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


async def diff(request: Request, user: User) -> Response:
    """Two versions side by side, the changed lines marked (and only the changes' context)."""
    try:
        a, b = int(request.query_params["a"]), int(request.query_params["b"])
    except (KeyError, ValueError):
        raise HTTPException(400, "name two versions: ?a=1&b=2") from None
    old, new = _stored(request, a), _stored(request, b)
    table = difflib.HtmlDiff(wrapcolumn=70).make_table(
        _lines(old), _lines(new), f"version {a}", f"version {b}", context=True, numlines=3
    )
    return render(request, user, "diff.html", flow=new.flow, a=a, b=b, table=Markup(table))


async def document(request: Request, user: User) -> Response:
    """A version's JSON document, as a download."""
    stored = _stored(request, int(request.path_params["version"]))
    body = json.dumps(stored.flow.model_dump(mode="json", by_alias=True), indent=2)
    name = f"{stored.flow.id}-v{stored.version}.json"
    return Response(
        body + "\n",
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def simulate(request: Request, user: User) -> Response:
    """The dry run: one contact through the flow on a private time-skipping server."""
    stored = _stored(request)
    context: dict[str, Any] = {"flow": stored.flow, "form": {}, "run": None, "problem": None}
    if request.method == "POST":
        form = await request.form()
        context["form"] = {k: str(v) for k, v in form.items() if k != "csrf"}
        try:
            contact = int(str(form.get("contact", "")))
            start = str(form.get("at", "")).strip()
            events = [
                PlannedEvent.parse(line.strip())
                for line in str(form.get("events", "")).splitlines()
                if line.strip()
            ]
            context["run"] = await dry_run(
                console(request).engine,
                stored.flow.id,
                contact,
                start_at=datetime.fromisoformat(start) if start else None,
                events=events,
            )
        except (ValueError, ValidationError, UnknownContact, DryRunStuck, FlowRejected) as error:
            context["problem"] = str(error)
    return render(request, user, "dry_run.html", **context)
