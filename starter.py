"""The flows client: deploy and validate flow documents, enroll contacts, watch participants.

python starter.py validate flows/welcome.json
python starter.py deploy flows/welcome.json
python starter.py start welcome --selection 1        (or --contact 3 4 5)
python starter.py status welcome
python starter.py stats welcome                     (--json; --funnel, --png FILE)
python starter.py diagram welcome                   (-o welcome.png, --mermaid)
python starter.py simulate welcome --contact 1      (a dry run on the time-skipping server)
python starter.py preview welcome welcome-email --contact 1      (nothing is sent)
python starter.py test-send welcome welcome-email --contact 1 --to me@example.com
python starter.py schema > flow.schema.json          (--sending: the sending settings')
python starter.py event form_submitted --contact 3 --form 1 --data topic=pricing
python starter.py user add ada@example.com --role admin   (a console user; asks the password)

Exit status: 0 done; 1 failed (an error the message explains, or `validate` found the document
invalid); 2 invalid input (the command line, a missing or unreadable file, a malformed value);
3 not done for everyone asked (`start` enrolled none of the contacts, or pause, resume or end
could not reach every participant). Every command closes its database engine and its Temporal
clients, runtime and threads before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import json
import os
import sys
import traceback
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, NoReturn

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import Client
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError

from activities.email import SmtpSettings
from activities.sms import TwilioSettings
from control.dry_run import DryRunStuck, PlannedEvent, UnknownContact, dry_run, render_timeline
from control.enrollment import enroll, selection_members
from control.flows import FlowRejected, UnknownFlow, deploy_flow, load_flow, read_document
from control.ingest import ingest
from control.lifecycle import (
    BatchResult,
    LifecycleError,
    ResumeResult,
    delete_flow,
    end_flow,
    pause_flow,
    resume_flow,
    run_flow,
)
from control.preview import EmailPreview, PreviewError, preview, send_as_test
from models.accounts import AccountError, Role, add_user
from models.content import content_folder
from models.crm import action_catalogue
from models.database import PROJECT_ROOT, create_tables, get_engine, session
from models.engine import Participant
from models.events import EventKind, FlowEvent
from models.flow import Flow
from models.sending import SendingSettings, is_sending_settings
from models.validation import check_flow, check_sending_settings
from peers.smtp_inbox import read_inbox
from peers.twilio_api import read_sms_outbox
from reports import diagram
from reports.funnel import funnel, render_funnel, to_chart
from reports.statistics import flow_statistics, render_table
from scripts import registered_scripts
from worker import TASK_QUEUE, connect

DONE, FAILED, INVALID, NOT_FOR_EVERYONE = 0, 1, 2, 3  # exit statuses (see above)


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


class InvalidInput(CommandError):
    """The command line or a file it names is not usable as it is: exit status 2."""


class Resources:
    """What a command opens — the database engine, and a Temporal runtime for its clients — and
    closes before the process exits.

    A Temporal runtime runs threads of its own. One still running when the interpreter shuts
    down can abort the process after its work is done ("Fatal Python error: PyGILState_Release",
    sdk-python issue 300), so the command's clients share one runtime that is not the SDK's
    process-wide default, and ``close`` lets go of it (its threads stop with its last client)
    while the interpreter is whole."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._runtime: Runtime | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine()
            create_tables(self._engine)
        return self._engine

    async def client(self) -> Client:
        if self._runtime is None:
            self._runtime = Runtime(telemetry=TelemetryConfig())
        return await connect(runtime=self._runtime)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._runtime is not None:
            Resources._closed_runtimes.append(weakref.ref(self._runtime))
        self._runtime = None
        # Clients and workers (the dry run's too) hold their runtime in reference cycles.
        gc.collect()

    # Runtimes let go of by commands: one that something still holds (a traceback kept by the
    # SDK's internals, now and then) would run its threads into the interpreter's shutdown.
    _closed_runtimes: ClassVar[list[weakref.ref[Runtime]]] = []

    @classmethod
    def lingering(cls) -> bool:
        gc.collect()
        return any(runtime() is not None for runtime in cls._closed_runtimes)


def exit_process(code: int) -> NoReturn:
    """Exit with the command's status. Should a Temporal runtime still be alive, skip the
    interpreter's shutdown, whose clean-up its threads could abort (everything the command had to
    do is done and its output flushed; the database engine is disposed)."""
    if Resources.lingering():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def cmd_schema(args: argparse.Namespace, __: Resources) -> int:
    document: type[BaseModel] = SendingSettings if args.sending else Flow
    schema = TypeAdapter(document).json_schema(by_alias=True)
    print(json.dumps(schema, indent=2))
    return 0


def _read(path: str) -> dict[str, object]:
    try:
        return read_document(Path(path))
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not JSON: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(str(exc)) from None


def cmd_validate(args: argparse.Namespace, used: Resources) -> int:
    document = _read(args.file)
    if is_sending_settings(document):
        return _validate_sending_settings(args.file, document)
    with session(used.engine()) as db:
        actions = action_catalogue(db)  # for warnings about forms' and links' own actions
    report = check_flow(
        document,
        actions=actions,
        known_scripts=registered_scripts(),
        content_folder=content_folder(),
    )
    for problem in report.problems:
        print(problem)
    if not report.can_save:
        print(f"{args.file}: invalid ({len(report.errors)} errors)")
        return FAILED
    verdict = "valid, ready to run" if report.can_run else "valid to save, not ready to run"
    print(f"{args.file}: {verdict}")
    return DONE


def _validate_sending_settings(file: str, document: object) -> int:
    problems = check_sending_settings(document)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{file}: invalid sending settings ({len(problems)} errors)")
        return FAILED
    print(f"{file}: valid sending settings")
    return DONE


def cmd_deploy(args: argparse.Namespace, used: Resources) -> int:
    try:
        deployed = deploy_flow(used.engine(), _read(args.file))
    except FlowRejected as exc:
        print(exc, file=sys.stderr)
        return FAILED
    if deployed.created:
        print(f"deployed {deployed.flow_id} version {deployed.version}")
    else:
        print(f"{deployed.flow_id} version {deployed.version} is already this document")
    for problem in deployed.report.problems:
        print(f"  {problem}")
    return DONE


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


async def _start(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
    contacts: list[int] = list(args.contact or [])
    if args.selection is not None:
        contacts += selection_members(engine, args.selection)
        if not contacts:
            raise CommandError(f"selection {args.selection} has no members")
    report = await enroll(
        await used.client(),
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
    return DONE if report.enrolled else NOT_FOR_EVERYONE


def cmd_start(args: argparse.Namespace, used: Resources) -> int:
    if not args.contact and args.selection is None:
        raise InvalidInput("name contacts with --contact ID… or a selection with --selection ID")
    return asyncio.run(_start(args, used))


def cmd_status(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
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
        versions = Counter(row.flow_version for row in active)
        if len(versions) > 1:  # e.g. some kept theirs at a resume: the state query says why
            print("active by version:")
            for version, count in sorted(versions.items()):
                print(f"  version {version:<32} {count:>6}")
    reasons = Counter(row.drop_out_reason for row in rows if row.drop_out_reason)
    if reasons:
        print("drop-out reasons:")
        for reason, count in reasons.most_common():
            print(f"  {reason:<40} {count:>6}")
    return DONE


def cmd_outbox(args: argparse.Namespace, _: Resources) -> int:
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
    return DONE


async def _lifecycle(args: argparse.Namespace, used: Resources) -> int:
    engine, client = used.engine(), await used.client()
    result: BatchResult
    if args.command == "pause":
        result = await pause_flow(client, engine, args.flow)
    elif args.command == "resume":
        result = await resume_flow(client, engine, args.flow)
    else:
        result = await end_flow(client, engine, args.flow)
    failed = f", {result.failed} failed" if result.failed else ""
    print(f"{args.flow}: {result.status}; {result.reached} participants {args.command}d{failed}")
    if isinstance(result, ResumeResult):
        _print_versions(result)
    return NOT_FOR_EVERYONE if result.failed else DONE


def _print_versions(result: ResumeResult) -> None:
    """Who took the version a resume offered, who kept their own and why."""
    kept = sum(result.kept.values())
    print(f"  {result.took} took version {result.version}, {kept} kept the version they had")
    for (version, why), count in sorted(result.kept.items()):
        print(f"  kept version {version} ({count}): {why}")
    if result.unanswered:
        print(f"  {result.unanswered} did not answer (is a worker running?)")


def cmd_lifecycle(args: argparse.Namespace, used: Resources) -> int:
    if args.command == "run":
        run_flow(used.engine(), args.flow)
        print(f"{args.flow}: running")
        return DONE
    if args.command == "delete":
        delete_flow(used.engine(), args.flow)
        print(f"{args.flow}: deleted")
        return DONE
    return asyncio.run(_lifecycle(args, used))


async def _event(args: argparse.Namespace, used: Resources) -> int:
    data: dict[str, str] = {}
    for pair in args.data or []:
        name, equals, value = pair.partition("=")
        if not equals:
            raise InvalidInput(f"--data takes name=value, not {pair!r}")
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
        raise InvalidInput(str(exc)) from None
    report = await ingest(await used.client(), used.engine(), event, task_queue=TASK_QUEUE)
    if not report.delivered:
        print(f"{event.event_id}: recorded and delivered before; nothing to do")
        return DONE
    print(f"{event.event_id}: {'recorded' if report.new else 'already recorded'}, delivered")
    for done in report.actions:
        print(f"  {done}")
    print(f"  signalled {len(report.signalled)} participants: {', '.join(report.signalled) or '-'}")
    for flow_id in report.enrolled:
        print(f"  enrolled in {flow_id}")
    for flow_id, reason in report.refused.items():
        print(f"  not enrolled in {flow_id}: {reason}")
    return DONE


def cmd_event(args: argparse.Namespace, used: Resources) -> int:
    return asyncio.run(_event(args, used))


def cmd_stats(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
    stored = load_flow(engine, args.flow)
    if not (args.funnel or args.png):
        stats = flow_statistics(engine, stored.flow, stored.version)
        print(stats.model_dump_json(indent=2) if args.json else render_table(stats))
        return DONE
    shown = funnel(engine, stored.flow, stored.version)
    if args.png:
        diagram.write_picture(to_chart(shown, stored.flow), Path(args.png).with_suffix(".png"))
    if args.json:
        print(shown.model_dump_json(indent=2))
    else:
        print(render_funnel(shown))
        if args.png:
            print(f"wrote {Path(args.png).with_suffix('.png')}")
    return DONE


def cmd_preview(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
    flow = load_flow(engine, args.flow).flow
    try:
        shown = preview(engine, flow, args.step, args.contact, SmtpSettings.from_settings())
    except PreviewError as problem:
        raise CommandError(str(problem)) from None
    html_file = None
    if isinstance(shown, EmailPreview) and shown.html is not None:
        html_file = Path(
            args.html_out
            or PROJECT_ROOT
            / ".data"
            / "previews"
            / (f"{flow.id}-{shown.step_id}-{shown.contact_id}.html")
        )
        html_file.parent.mkdir(parents=True, exist_ok=True)
        html_file.write_text(shown.html, encoding="utf-8")
    if args.json:
        print(shown.model_dump_json(indent=2))
        return DONE
    fields = shown.model_dump(exclude={"html", "merge_tags", "step_id", "contact_id"})
    for name, value in fields.items():
        if value is not None:
            text = str(value)
            print(f"{name}:" + (f"\n{text}" if "\n" in text else f" {text}"))
    if html_file is not None:
        print(f"html: {html_file}")
    print("merge tags:")
    for tag, value in shown.merge_tags.items():
        print(f"  [[{tag}]] = {value!r}")
    return DONE


def cmd_test_send(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
    flow = load_flow(engine, args.flow).flow
    try:
        twilio: TwilioSettings | None = TwilioSettings.from_settings()
    except ValueError:
        twilio = None
    try:
        answer = asyncio.run(
            send_as_test(
                engine, flow, args.step, args.contact, args.to, SmtpSettings.from_settings(), twilio
            )
        )
    except PreviewError as problem:
        raise CommandError(str(problem)) from None
    print(f"test sent to {args.to}: {answer}")
    return DONE


def cmd_diagram(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
    stored = load_flow(engine, args.flow)
    counts = diagram.StepCounts(
        at=diagram.participants_at(engine, args.flow),
        through=diagram.participants_through(engine, args.flow),
    )
    mermaid = diagram.to_mermaid(stored.flow, stored.version, counts)
    if args.mermaid:
        print(mermaid, end="")
        return DONE
    path = Path(args.output or PROJECT_ROOT / ".data" / "diagrams" / f"{args.flow}.svg")
    note = diagram.live_note(stored.flow)
    diagram.write_picture(diagram.to_graphviz(stored.flow, stored.version, counts, note), path)
    path.with_suffix(".mmd").write_text(mermaid, encoding="utf-8")
    print(f"wrote {path}\nwrote {path.with_suffix('.mmd')} (Mermaid)")
    return DONE


def cmd_simulate(args: argparse.Namespace, used: Resources) -> int:
    engine = used.engine()
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
    except (UnknownContact, DryRunStuck) as exc:
        raise CommandError(str(exc)) from None
    print(run.model_dump_json(indent=2) if args.json else render_timeline(run))
    return DONE


def cmd_user(args: argparse.Namespace, used: Resources) -> int:
    """``user add``: a console account (the first admin, say)."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.email}: ")
        if getpass.getpass("again: ") != password:
            raise InvalidInput("the two passwords differ")
    try:
        with session(used.engine()) as db:
            user = add_user(db, args.email, password, Role(args.role), args.name)
            print(f"added {user.email} ({user.role})")
    except AccountError as problem:
        raise InvalidInput(str(problem)) from None
    return DONE


def _user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = sub.add_parser("user", help="console users")
    actions = users.add_subparsers(dest="user_command", required=True)
    add = actions.add_parser("add", help="add a user who signs in to the console")
    add.set_defaults(handler=cmd_user)
    add.add_argument("email", help="the sign-in name")
    add.add_argument("--role", choices=[role.value for role in Role], default=Role.viewer.value)
    add.add_argument("--name", default="", help="shown in the console")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (else asked)"
    )


def _observability_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = sub.add_parser("stats", help="a flow's statistics: participants, drop-outs, emails")
    stats.set_defaults(handler=cmd_stats)
    stats.add_argument("flow")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument(
        "--funnel",
        action="store_true",
        help="per step in path order: entered, went on, waiting, left (and why); experiment paths",
    )
    stats.add_argument("--png", metavar="FILE", help="draw the funnel as a PNG chart (Graphviz)")

    drawing = sub.add_parser("diagram", help="draw a flow's graph with live counts per step")
    drawing.set_defaults(handler=cmd_diagram)
    drawing.add_argument("flow")
    drawing.add_argument(
        "-o", "--output", help="the picture: .svg (default .data/diagrams/FLOW.svg) or .png"
    )
    drawing.add_argument("--mermaid", action="store_true", help="print Mermaid text only")

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

    shown = sub.add_parser(
        "preview", help="a message step as a contact would get it, merge tags filled in; not sent"
    )
    shown.set_defaults(handler=cmd_preview)
    sent = sub.add_parser(
        "test-send", help="send a message step as a contact would get it to ADDRESS, as a test"
    )
    sent.set_defaults(handler=cmd_test_send)
    for command in (shown, sent):
        command.add_argument("flow")
        command.add_argument("step")
        command.add_argument("--contact", type=int, required=True, metavar="ID")
    shown.add_argument("--html-out", metavar="FILE", help="default .data/previews/…html")
    shown.add_argument("--json", action="store_true", help="print JSON")
    sent.add_argument("--to", required=True, metavar="ADDRESS", help="an address or a number")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="starter.py", description="Durable marketing flows.")
    sub = p.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.Namespace, Resources], int]]] = {
        "schema": ("print the JSON Schema of a flow document", cmd_schema),
        "validate": (
            "check a flow document (or the sending settings) and list every problem",
            cmd_validate,
        ),
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
        if name == "schema":
            command.add_argument(
                "--sending", action="store_true", help="the sending settings document's schema"
            )
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
    _user_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors exit here with status 2
    used = Resources()
    try:
        return _run(args, used)
    finally:
        used.close()


def _run(args: argparse.Namespace, used: Resources) -> int:
    """The command's exit status; every failure is told on stderr and ends here, so nothing it
    held (a client in a traceback) outlives the command."""
    try:
        code: int = args.handler(args, used)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INVALID
    except (CommandError, UnknownFlow, LifecycleError, FlowRejected) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    except (RuntimeError, RPCError) as exc:  # e.g. the Temporal server cannot be reached
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    except Exception:
        traceback.print_exc()
        return FAILED
    return code


if __name__ == "__main__":
    exit_process(main())
