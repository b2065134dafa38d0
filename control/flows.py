"""Deploying flow documents as immutable versions, and loading them back."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from models.content import ContentFileError, content_folder, content_path
from models.crm import action_catalogue, crm_lists
from models.database import session
from models.engine import FlowRecord, FlowStatus, FlowVersion, Participant
from models.flow import Flow
from models.validation import FlowReport, check_flow
from scripts import registered_scripts


class FlowRejected(Exception):
    """A document that is not valid to save (or, when starting, not ready to run)."""

    def __init__(self, report: FlowReport, what: str = "invalid flow") -> None:
        self.report = report
        lines = [str(p) for p in report.problems if p.level != "warning"]
        super().__init__(f"{what}:\n  " + "\n  ".join(lines))


class UnknownFlow(LookupError):
    pass


@dataclass(frozen=True)
class Deployed:
    flow_id: str
    version: int
    created: bool  # False when the same document was already the latest version
    report: FlowReport


@dataclass(frozen=True)
class StoredFlow:
    flow: Flow
    version: int
    status: FlowStatus


def read_document(path: Path, folder: Path | None = None) -> dict[str, Any]:
    """A flow file, with ``content_file`` bodies inlined so the stored version is self-contained.

    Content files are read from the content folder (``folder``; unset: the configured one) and
    only from there: one that is not a file there stays named, for validation to report.
    """
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a flow document is a JSON object")
    folder = folder or content_folder()
    for step in document.get("steps", []):
        name = step.get("content_file") if isinstance(step, dict) else None
        if isinstance(name, str) and "html" not in step:
            try:
                step["html"] = content_path(folder, name).read_text(encoding="utf-8")
            except ContentFileError:
                continue
            del step["content_file"]
    return document


def _checksum(flow: Flow) -> str:
    canonical = json.dumps(flow.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_document(engine: Engine, document: object, *, overlaps: bool = False) -> FlowReport:
    """The report ``deploy_flow`` decides on: request and sale steps checked against this CRM's
    types, statuses, priorities, categories and stages, scripts against the registered ones,
    content files in the content folder. ``overlaps``: also warn about steps that duplicate or
    contradict the own actions of the forms and links the flow uses."""
    with session(engine) as db:
        lists = crm_lists(db)
        actions = action_catalogue(db) if overlaps else None
    return check_flow(
        document,
        lists,
        actions=actions,
        known_scripts=registered_scripts(),
        content_folder=content_folder(),
    )


def deploy_flow(engine: Engine, document: dict[str, Any]) -> Deployed:
    """Store a new version if the document is valid to save; all or nothing (``check_document``
    says what is checked)."""
    report = check_document(engine, document)
    if not report.can_save or report.flow is None:
        raise FlowRejected(report)
    flow = report.flow
    checksum = _checksum(flow)
    with session(engine) as db:
        record = db.get(FlowRecord, flow.id)
        if record is None:
            record = FlowRecord(id=flow.id, name=flow.name)
        else:
            latest = db.exec(
                select(FlowVersion).where(
                    FlowVersion.flow_id == flow.id, FlowVersion.version == record.latest_version
                )
            ).first()
            if latest is not None and latest.checksum == checksum:
                return Deployed(flow.id, record.latest_version, False, report)
            if latest is not None:
                _check_edit(db, record, Flow.model_validate(latest.definition), flow, report)
        record.latest_version += 1
        record.name = flow.name
        db.add(record)
        db.add(
            FlowVersion(
                flow_id=flow.id,
                version=record.latest_version,
                definition=flow.model_dump(mode="json", by_alias=True),
                checksum=checksum,
            )
        )
        return Deployed(flow.id, record.latest_version, True, report)


# Steps that hold participants for a while: while paused, they cannot disappear under them.
HOLDING_STEP_TYPES = frozenset({"wait_time", "wait_for_action", "split"})


def _check_edit(db: Session, record: FlowRecord, old: Flow, new: Flow, report: FlowReport) -> None:
    """The spec's edit rules: no edits while running; while paused, no removing a wait,
    wait_for_action or split step (or a split's branch) that holds participants."""
    if record.status == FlowStatus.running:
        raise FlowRejected(report, f"flow {record.id!r} is running: pause it to edit")
    if record.status != FlowStatus.paused:
        return
    holding = Counter(
        db.exec(
            select(Participant.current_step).where(
                Participant.flow_id == record.id, Participant.status == "Active"
            )
        ).all()
    )
    new_ids = {step.id for step in new.steps}
    problems: list[str] = []
    for step in old.steps:
        if step.type in HOLDING_STEP_TYPES and holding[step.id] and step.id not in new_ids:
            problems.append(f"step {step.id!r} holds {holding[step.id]} participants")
    if problems:
        raise FlowRejected(
            report, "a paused flow cannot lose steps that hold participants: " + "; ".join(problems)
        )


def load_flow(engine: Engine, flow_id: str, version: int | None = None) -> StoredFlow:
    with session(engine) as db:
        record = db.get(FlowRecord, flow_id)
        if record is None:
            raise UnknownFlow(f"no flow {flow_id!r} is deployed")
        row = db.exec(
            select(FlowVersion).where(
                FlowVersion.flow_id == flow_id,
                FlowVersion.version == (version or record.latest_version),
            )
        ).first()
        if row is None:
            raise UnknownFlow(f"flow {flow_id!r} has no version {version}")
        return StoredFlow(
            Flow.model_validate(row.definition), row.version, FlowStatus(record.status)
        )


def set_flow_status(engine: Engine, flow_id: str, status: FlowStatus) -> None:
    with session(engine) as db:
        record = db.get(FlowRecord, flow_id)
        if record is None:
            raise UnknownFlow(f"no flow {flow_id!r} is deployed")
        record.status = status.value
        db.add(record)
