"""CPU of the send_email activity's own work per message, outside Temporal: the step's entry
record and checks, reading the contact, building the message, the ledger's claim, mark and
outcome, the SMTP conversation with a kept connection, and the participant's departure.

    .venv/bin/python bench/send_activity.py [--messages 400] [--without-departure]

Calls the activity method itself in a loop on one thread (after 20 warm-up sends) against a
SQLite file of its own and the kit's SMTP inbox on loopback, and prints this thread's CPU per
message (``time.thread_time``: steadier than rates on a shared machine), the process's (the
inbox's thread too) and the wall time. What Temporal adds around the activity is the email part
of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.email import EmailActivities, EmailSend
from activities.participants import ParticipantRecord
from bench.harness import seed_contacts, smtp_inbox, temp_database
from bench.parts.email import email_flow
from models.engine import ParticipantStatus
from models.flow import Flow, SendEmail
from models.participant import ParticipantState

WARM_UP = 20


def requests(flow: Flow, contact_ids: list[int], departure: bool) -> list[EmailSend]:
    """What a participant's send_email step hands its activity, one per contact."""
    step = flow.step("mail")
    assert isinstance(step, SendEmail)
    made: list[EmailSend] = []
    for contact_id in contact_ids:
        participant = str(uuid.uuid4())
        state = ParticipantState(
            participant_id=participant,
            flow_id=flow.id,
            flow_version=1,
            contact_id=contact_id,
            enrolled_at=datetime.now(UTC),
            current_step=step.id,
        )
        leaving = state.model_copy(
            update={"status": ParticipantStatus.finished, "current_step": step.next}
        )
        made.append(
            EmailSend(
                delivery_key=f"{participant}/{step.id}/1",
                flow_id=flow.id,
                flow_name=flow.name,
                contact_id=contact_id,
                step=step,
                settings=flow.email,
                record=ParticipantRecord(state=state),
                departure=ParticipantRecord(state=leaving) if departure else None,
            )
        )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--without-departure", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        crm = seed_contacts(engine, args.messages + WARM_UP)
        flow = Flow.model_validate(email_flow("bench-send"))
        sends = requests(flow, crm.contact_ids, departure=not args.without_departure)
        with smtp_inbox(directory) as inbox:
            activity = EmailActivities(engine, inbox.settings)
            for request in sends[:WARM_UP]:
                activity.send_email(request)
            thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
            statuses = [activity.send_email(request).status for request in sends[WARM_UP:]]
            thread = time.thread_time() - thread
            process = time.process_time() - process
            wall = time.perf_counter() - wall
        engine.dispose()
    count = len(statuses)
    print(f"{count} messages, {statistics.mode(statuses)}: per message")
    print(f"  this thread's CPU  {thread * 1000 / count:.2f} ms")
    print(f"  process CPU        {process * 1000 / count:.2f} ms (with the inbox's thread)")
    print(f"  wall               {wall * 1000 / count:.2f} ms")


if __name__ == "__main__":
    main()
