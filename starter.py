"""The flows client: deploy and validate flow documents, enroll contacts, watch participants.

python starter.py validate flows/welcome.json
python starter.py deploy flows/welcome.json
python starter.py start welcome --selection 1        (or --contact 3 4 5)
python starter.py status welcome
python starter.py stats welcome                     (--json)
python starter.py diagram welcome                   (-o welcome.png, --mermaid)
python starter.py simulate welcome --contact 1      (a dry run on the time-skipping server)
python starter.py schema > flow.schema.json
python starter.py event form_submitted --contact 3 --form 1 --data topic=pricing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine
from sqlmodel import select

from control.dry_run import PlannedEvent, UnknownContact, dry_run, render_timeline
from control.enrollment import enroll, selection_members
from control.flows import FlowRejected, UnknownFlow, deploy_flow, load_flow, read_document
from control.ingest import ingest
from control.lifecycle import (
    LifecycleError,
    delete_flow,
    end_flow,
    pause_flow,
    resume_flow,
    run_flow,
)
from models.crm import action_catalogue
from models.database import PROJECT_ROOT, create_tables, get_engine, session
from models.engine import Participant
from models.events import EventKind, FlowEvent
from models.flow import Flow
from models.validation import check_flow
from peers.smtp_inbox import read_inbox
from peers.twilio_api import read_sms_outbox
from reports import diagram
from reports.statistics import flow_statistics, render_table
from scripts import registered_scripts
from worker import TASK_QUEUE, connect


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _engine() -> Engine:
    engine = get_engine()
    create_tables(engine)
    return engine


def cmd_schema(_: argparse.Namespace) -> int:
    schema = TypeAdapter(Flow).json_schema(by_alias=True)
    print(json.dumps(schema, indent=2))
    return 0


def _read(path: str) -> dict[str, object]:
    try:
        return read_document(Path(path))
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path}: not JSON: {exc}") from None
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    document = _read(args.file)
    with session(_engine()) as db:
        actions = action_catalogue(db)  # for warnings about forms' and links' own actions
    report = check_flow(document, actions=actions, known_scripts=registered_scripts())
    for problem in report.problems:
        print(problem)
    if not report.can_save:
        print(f"{args.file}: invalid ({len(report.errors)} errors)")
        return 1
    verdict = "valid, ready to run" if report.can_run else "valid to save, not ready to run"
    print(f"{args.file}: {verdict}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        deployed = deploy_flow(_engine(), _read(args.file))
    except FlowRejected as exc:
        print(exc, file=sys.stderr)
        return 1
    if deployed.created:
        print(f"deployed {deployed.flow_id} version {deployed.version}")
    else:
        print(f"{deployed.flow_id} version {deployed.version} is already this document")
    for problem in deployed.report.problems:
        print(f"  {problem}")
    return 0


class ProgressBar:
    """A one-line progress bar on stderr for large enrollments (silent for small ones)."""

    def __init__(self, total: int, width: int = 40) -> None:
        self.total, self.done, self.width = total, 0, width
        self.visible = total >= 50 and sys.stderr.isatty()

    def __call__(self, count: int) -> None:
        self.done += count
        if self.visible:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            print(f"\r[{bar}] {self.done}/{self.total}", end="", file=sys.stderr, flush=True)
            if self.done == self.total:
                print(file=sys.stderr)


async def _start(args: argparse.Namespace) -> int:
    engine = _engine()
    contacts: list[int] = list(args.contact or [])
    if args.selection is not None:
        contacts += selection_members(engine, args.selection)
        if not contacts:
            raise CommandError(f"selection {args.selection} has no members")
    client = await connect()
    report = await enroll(
        client,
        engine,
        args.flow,
        contacts,
        task_queue=TASK_QUEUE,
        progress=ProgressBar(len(contacts)),
    )
    print(f"{args.flow} v{report.version}: enrolled {len(report.enrolled)} of {len(contacts)}")
    reasons = Counter(report.refused.values())
    for reason, count in reasons.most_common():
        ids = [c for c, r in report.refused.items() if r == reason]
        shown = ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")
        print(f"  not enrolled ({count}): {reason}: {shown}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    if not args.contact and args.selection is None:
        raise CommandError("name contacts with --contact ID… or a selection with --selection ID")
    return asyncio.run(_start(args))


def cmd_status(args: argparse.Namespace) -> int:
    engine = _engine()
    stored = load_flow(engine, args.flow)
    with session(engine) as db:
        rows = db.exec(select(Participant).where(Participant.flow_id == args.flow)).all()
    print(f"{stored.flow.name} ({args.flow}), latest version {stored.version}, {stored.status}")
    print(f"{len(rows)} participants")
    by_status = Counter(row.status for row in rows)
    for status, count in sorted(by_status.items()):
        print(f"  {status:<22} {count:>6}")
    active = [row for row in rows if row.status == "Active"]
    if active:
        print("active by step:")
        labels = {step.id: f"{step.label} ({step.type})" for step in stored.flow.steps}
        waiting = Counter(row.current_step for row in active if row.wait_until is not None)
        for step_id, count in Counter(row.current_step for row in active).most_common():
            label = labels.get(step_id or "", step_id or "(starting)")
            note = f"  {waiting[step_id]} waiting" if waiting[step_id] else ""
            print(f"  {label:<40} {count:>6}{note}")
    reasons = Counter(row.drop_out_reason for row in rows if row.drop_out_reason)
    if reasons:
        print("drop-out reasons:")
        for reason, count in reasons.most_common():
            print(f"  {reason:<40} {count:>6}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    """What the dev stack's local SMTP inbox and SMS endpoint received, oldest first."""
    folder = Path(args.folder)
    mails = read_inbox(folder / "mail")
    texts = read_sms_outbox(folder / "sms.jsonl")
    print(f"{len(mails)} emails in {folder / 'mail'}")
    for mail in mails[-args.last :]:
        when = mail.date.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        print(f"  {when}  {mail.recipients:<36} {mail.subject}")
    print(f"{len(texts)} SMS in {folder / 'sms.jsonl'}")
    for text in texts[-args.last :]:
        body = str(text.get("body", "")).replace("\n", " ")
        print(f"  {text.get('date_created', '')}  {text.get('to', '')!s:<16} {body[:60]}")
    return 0


async def _lifecycle(args: argparse.Namespace) -> int:
    engine = _engine()
    client = await connect()
    change = {"pause": pause_flow, "resume": resume_flow, "end": end_flow}[args.command]
    result = await change(client, engine, args.flow)
    failed = f", {result.failed} failed" if result.failed else ""
    print(f"{args.flow}: {result.status}; {result.reached} participants {args.command}d{failed}")
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    if args.command == "run":
        run_flow(_engine(), args.flow)
        print(f"{args.flow}: running")
        return 0
    if args.command == "delete":
        delete_flow(_engine(), args.flow)
        print(f"{args.flow}: deleted")
        return 0
    return asyncio.run(_lifecycle(args))


async def _event(args: argparse.Namespace) -> int:
    data: dict[str, str] = {}
    for pair in args.data or []:
        name, equals, value = pair.partition("=")
        if not equals:
            raise CommandError(f"--data takes name=value, not {pair!r}")
        data[name] = value
    try:
        event = FlowEvent(
            event_id=args.id or f"cli/{uuid.uuid4()}",
            kind=args.kind,
            contact_id=args.contact,
            occurred_at=datetime.now(UTC),
            flow_id=args.flow,
            step_id=args.step,
            link=args.link,
            form_id=args.form,
            selection_id=args.selection,
            project_id=args.project,
            sale_id=args.sale,
            data=data,
            by_import=args.by_import,
        )
    except ValidationError as exc:
        raise CommandError(str(exc)) from None
    engine = _engine()
    report = await ingest(await connect(), engine, event, task_queue=TASK_QUEUE)
    if not report.delivered:
        print(f"{event.event_id}: recorded and delivered before; nothing to do")
        return 0
    print(f"{event.event_id}: {'recorded' if report.new else 'already recorded'}, delivered")
    print(f"  signalled {len(report.signalled)} participants: {', '.join(report.signalled) or '-'}")
    for flow_id in report.enrolled:
        print(f"  enrolled in {flow_id}")
    for flow_id, reason in report.refused.items():
        print(f"  not enrolled in {flow_id}: {reason}")
    return 0


def cmd_event(args: argparse.Namespace) -> int:
    return asyncio.run(_event(args))


def cmd_stats(args: argparse.Namespace) -> int:
    engine = _engine()
    stored = load_flow(engine, args.flow)
    stats = flow_statistics(engine, stored.flow, stored.version)
    print(stats.model_dump_json(indent=2) if args.json else render_table(stats))
    return 0


async def _through(flow_id: str) -> Counter[str] | None:
    try:
        client = await connect()
    except RuntimeError as exc:
        print(f"note: Temporal not reachable ({exc}): 'through' counts left out", file=sys.stderr)
        return None
    return await diagram.participants_through(client, flow_id)


def cmd_diagram(args: argparse.Namespace) -> int:
    engine = _engine()
    stored = load_flow(engine, args.flow)
    counts = diagram.StepCounts(
        at=diagram.participants_at(engine, args.flow),
        through=None if args.no_temporal else asyncio.run(_through(args.flow)),
    )
    mermaid = diagram.to_mermaid(stored.flow, stored.version, counts)
    if args.mermaid:
        print(mermaid, end="")
        return 0
    path = Path(args.output or PROJECT_ROOT / ".data" / "diagrams" / f"{args.flow}.svg")
    note = diagram.live_note(stored.flow)
    diagram.write_picture(diagram.to_graphviz(stored.flow, stored.version, counts, note), path)
    path.with_suffix(".mmd").write_text(mermaid, encoding="utf-8")
    print(f"wrote {path}\nwrote {path.with_suffix('.mmd')} (Mermaid)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    engine = _engine()
    try:
        run = asyncio.run(
            dry_run(
                engine,
                args.flow,
                args.contact,
                version=args.version,
                start_at=args.at,
                events=args.event,
            )
        )
    except UnknownContact as exc:
        raise CommandError(str(exc)) from None
    print(run.model_dump_json(indent=2) if args.json else render_timeline(run))
    return 0


def _observability_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = sub.add_parser("stats", help="a flow's statistics: participants, drop-outs, emails")
    stats.set_defaults(handler=cmd_stats)
    stats.add_argument("flow")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    drawing = sub.add_parser("diagram", help="draw a flow's graph with live counts per step")
    drawing.set_defaults(handler=cmd_diagram)
    drawing.add_argument("flow")
    drawing.add_argument(
        "-o", "--output", help="the picture: .svg (default .data/diagrams/FLOW.svg) or .png"
    )
    drawing.add_argument("--mermaid", action="store_true", help="print Mermaid text only")
    drawing.add_argument(
        "--no-temporal", action="store_true", help="leave out 'through' (read from Temporal)"
    )

    simulate = sub.add_parser(
        "simulate", help="dry-run a flow for one contact: a timeline, nothing sent or changed"
    )
    simulate.set_defaults(handler=cmd_simulate)
    simulate.add_argument("flow")
    simulate.add_argument("--contact", type=int, required=True, metavar="ID")
    simulate.add_argument("--version", type=int, help="a deployed version (default: the latest)")
    simulate.add_argument(
        "--at",
        type=datetime.fromisoformat,
        metavar="YYYY-MM-DDTHH:MM",
        help="enroll at this future local time, in the flow's time zone (default: now)",
    )
    simulate.add_argument(
        "--event",
        action="append",
        default=[],
        type=PlannedEvent.parse,
        metavar="KIND@OFFSET[,key=value]",
        help="what the contact does and when, e.g. link_clicked@2d,step=welcome or "
        "form_submitted@3h,form=1,data.topic=pricing (repeatable)",
    )
    simulate.add_argument("--json", action="store_true", help="print JSON instead of a timeline")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="starter.py", description="Durable marketing flows.")
    sub = p.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "schema": ("print the JSON Schema of a flow document", cmd_schema),
        "validate": ("check a flow document and list every problem", cmd_validate),
        "deploy": ("validate and store a new flow version", cmd_deploy),
        "start": ("enroll contacts in a flow (idempotent)", cmd_start),
        "status": ("participants per status and per step", cmd_status),
        "outbox": ("emails and SMS the dev stack's local peers received", cmd_outbox),
        "event": ("record an event and deliver it to participants and triggers", cmd_event),
        "run": ("turn a flow's triggers on", cmd_lifecycle),
        "pause": ("freeze every participant where it is; new enrollees queue", cmd_lifecycle),
        "resume": ("let paused participants go on, with the latest version", cmd_lifecycle),
        "end": ("stop a flow: active participants become Cancelled", cmd_lifecycle),
        "delete": ("delete a flow that is not running", cmd_lifecycle),
    }
    for name, (help_text, handler) in commands.items():
        command = sub.add_parser(name, help=help_text)
        command.set_defaults(handler=handler)
        if name in ("validate", "deploy"):
            command.add_argument("file")
        if name in ("start", "status", "run", "pause", "resume", "end", "delete"):
            command.add_argument("flow")
        if name == "event":
            command.add_argument("kind", choices=[kind.value for kind in EventKind])
            command.add_argument("--contact", type=int, required=True, metavar="ID")
            command.add_argument("--id", help="event id (idempotency key); default: a new one")
            command.add_argument("--form", type=int, metavar="ID")
            command.add_argument("--data", nargs="+", metavar="NAME=VALUE", help="form fields")
            command.add_argument("--link", metavar="URL")
            command.add_argument("--flow", metavar="ID", help="the flow of a tracked email")
            command.add_argument("--step", metavar="ID", help="its send_email step")
            command.add_argument("--selection", type=int, metavar="ID")
            command.add_argument("--project", type=int, metavar="ID")
            command.add_argument("--sale", type=int, metavar="ID")
            command.add_argument("--by-import", action="store_true", help="triggers ignore it")
        if name == "start":
            command.add_argument("--contact", type=int, nargs="+", metavar="ID")
            command.add_argument("--selection", type=int, metavar="ID")
        if name == "outbox":
            command.add_argument("--folder", default=str(PROJECT_ROOT / ".data" / "outbox"))
            command.add_argument("--last", type=int, default=20, help="show this many of each")
    _observability_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (CommandError, UnknownFlow, LifecycleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FlowRejected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # e.g. the Temporal server cannot be reached
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
