"""The step editor: the flow's JSON document edited through forms the browser builds from the flow
JSON Schema (``static/editor.js``), checked here as it is typed by the same validation that
``deploy`` applies, and stored as a new version only when it is valid to save."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from markupsafe import Markup
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from console.web import console, render
from control.flows import FlowRejected, UnknownFlow, check_document, deploy_flow, load_flow
from models.accounts import User
from models.flow import Flow
from models.merge_tags import MERGE_TAGS
from models.sms import segments
from models.validation import FlowReport

MAX_DOCUMENT_BYTES = 2 * 1024 * 1024  # validation refuses more than 1 MiB with its reason
FLOW_SCHEMA = TypeAdapter(Flow).json_schema(by_alias=True)
SMS_STEP_TYPES = ("send_sms", "notify_sms")


async def editor(request: Request, user: User) -> Response:
    flow_id = request.path_params["flow_id"]
    version = request.query_params.get("version")
    try:
        stored = load_flow(
            console(request).engine,
            flow_id,
            int(version) if version and version.isdigit() else None,
        )
    except UnknownFlow as missing:
        return render(request, user, "refused.html", status_code=404, reason=str(missing))
    document = stored.flow.model_dump(mode="json", by_alias=True, exclude_none=True)
    return render(
        request,
        user,
        "editor.html",
        flow=stored.flow,
        stored=stored,
        document=_script_json(document),
        schema=_script_json(FLOW_SCHEMA),
        merge_tags=_script_json(sorted(MERGE_TAGS)),
    )


def _script_json(value: object) -> Markup:
    """JSON for a ``<script type="application/json">``, in its own key order (the forms follow
    the schema's), with nothing that could end the script element."""
    text = json.dumps(value, ensure_ascii=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


async def _document(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"a flow document of more than {MAX_DOCUMENT_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"a flow document of more than {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)


def _answer(report: FlowReport, document: Any) -> dict[str, Any]:
    """The problems (level, step, field, message) and each SMS text's length as sent."""
    sms: dict[str, str] = {}
    steps = document.get("steps") if isinstance(document, dict) else None
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and step.get("type") in SMS_STEP_TYPES:
            text = step.get("text")
            if isinstance(text, str) and isinstance(step.get("id"), str):
                length = segments(text)
                sms[step["id"]] = f"{length.characters} characters · {length}"
    return {
        "can_save": report.can_save,
        "can_run": report.can_run,
        "problems": [
            {"level": p.level, "step": p.step, "field": p.field, "message": p.message}
            for p in report.problems
        ],
        "sms": sms,
    }


async def check(request: Request, user: User) -> Response:
    try:
        document = await _document(request)
    except ValueError as error:  # JSONDecodeError is one
        return JSONResponse({"error": str(error)}, status_code=400)
    report = await asyncio.to_thread(
        check_document, console(request).engine, document, overlaps=True
    )
    return JSONResponse(_answer(report, document))


async def save(request: Request, user: User) -> Response:
    """A new version, only when the document is valid to save (an identical one adds none)."""
    flow_id = request.path_params["flow_id"]
    try:
        document = await _document(request)
    except ValueError as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    if not isinstance(document, dict) or document.get("id") != flow_id:
        return JSONResponse(
            {"error": f"the document's id must stay {flow_id!r}: upload it as a new flow"},
            status_code=400,
        )
    try:
        deployed = await asyncio.to_thread(deploy_flow, console(request).engine, document)
    except FlowRejected as refused:
        answer = _answer(refused.report, document)
        return JSONResponse({"error": str(refused).splitlines()[0], **answer}, status_code=422)
    return JSONResponse(
        {
            "version": deployed.version,
            "created": deployed.created,
            **_answer(deployed.report, document),
        }
    )
