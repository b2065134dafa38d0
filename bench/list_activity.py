"""CPU of the list steps' activities per call, outside Temporal: the step's entry record and
checks, the lists' existence, the membership and its event, in one transaction.

    .venv/bin/python bench/list_activity.py [--calls 2000]

Calls ``add_to_list`` for every contact, then ``remove_from_list`` for every contact (half of
them on a selection, half on a project, as the throughput part's flow does), each on one thread
after 20 warm-up calls, against a SQLite file of its own, and prints this thread's CPU per call
(``time.thread_time``: steadier than rates on a shared machine). What Temporal and a busy worker
add around them is the throughput part of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.crm import CrmActivities, ListChange
from activities.participants import ParticipantRecord
from bench.harness import Crm, seed_contacts, temp_database
from models.participant import ParticipantState

WARM_UP = 20


def changes(crm: Crm, step: str) -> list[ListChange]:
    """What a participant's list step hands its activity, one per contact."""
    made: list[ListChange] = []
    for index, contact_id in enumerate(crm.contact_ids):
        state = ParticipantState(
            participant_id=str(uuid.uuid4()),
            flow_id="bench-lists",
            flow_version=1,
            contact_id=contact_id,
            enrolled_at=datetime.now(UTC),
            current_step=step,
        )
        lists = (
            {"selection_id": crm.target_selection_id}
            if index % 2 == 0
            else {"project_id": crm.project_id}
        )
        made.append(
            ListChange(contact_id=contact_id, record=ParticipantRecord(state=state), **lists)
        )
    return made


def per_call(activity: Callable[[ListChange], object], calls: Sequence[ListChange]) -> float:
    """This thread's CPU per call, in ms."""
    started = time.thread_time()
    for change in calls:
        activity(change)
    return (time.thread_time() - started) * 1000 / len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        engine = temp_database(Path(scratch))
        crm = seed_contacts(engine, args.calls + WARM_UP)
        activities = CrmActivities(engine)
        adds, removes = changes(crm, "add"), changes(crm, "remove")
        for change in adds[:WARM_UP]:
            activities.add_to_list(change)
        adding = per_call(activities.add_to_list, adds[WARM_UP:])
        removing = per_call(activities.remove_from_list, removes[WARM_UP:])
        engine.dispose()
    print(f"{args.calls} calls each: this thread's CPU per call")
    print(f"  add_to_list       {adding:.2f} ms")
    print(f"  remove_from_list  {removing:.2f} ms")


if __name__ == "__main__":
    main()
