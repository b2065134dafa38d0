"""distribute_to_owner under concurrency, on the real dev server: 100 participants reach the step
at once and 3 owners get 34, 33 and 33 of them, whatever the interleaving."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment

from models.crm import Associate, Contact, Notification
from models.database import session
from models.engine import CrmEvent, OwnerShare, ParticipantStatus
from tests.test_participant import flow_of, start
from worker import build_worker

PARTICIPANTS = 100
OWNERS = 3


async def test_a_hundred_at_once_over_three_owners_is_34_33_33(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    with session(engine) as db:
        owners = [Associate(name=f"Owner {n}", email=f"owner{n}@example.com") for n in range(3)]
        db.add_all(owners)
        contacts = [Contact(first_name="Lead", last_name=str(n)) for n in range(PARTICIPANTS)]
        db.add_all(contacts)
        db.flush()
        owner_ids = [o.id for o in owners if o.id is not None]
        contact_ids = [c.id for c in contacts if c.id is not None]
    flow = flow_of(
        [
            {
                "id": "assign",
                "type": "distribute_to_owner",
                "next": "done",
                "associate_ids": owner_ids,
            },
            {"id": "done", "type": "finish"},
        ]
    )
    began = time.monotonic()
    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        handles = await asyncio.gather(
            *(start(dev_env, task_queue, flow, contact_id) for contact_id in contact_ids)
        )
        states = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    elapsed = time.monotonic() - began
    print(f"\n{PARTICIPANTS} participants over {OWNERS} owners in {elapsed:.1f} s")

    assert {s.status for s in states} == {ParticipantStatus.finished}
    with session(engine) as db:
        assigned = Counter(
            db.exec(select(Contact.our_contact_id).where(col(Contact.id).in_(contact_ids))).all()
        )
        shares = {s.associate_id: s.assigned for s in db.exec(select(OwnerShare))}
        notifications = Counter(
            db.exec(
                select(Notification.associate_id).where(
                    col(Notification.associate_id).in_(owner_ids)
                )
            ).all()
        )
        events = db.exec(select(CrmEvent).where(CrmEvent.kind == "contact_updated")).all()
    assert sorted(assigned.values(), reverse=True) == [34, 33, 33]
    assert set(assigned) == set(owner_ids)
    assert shares == dict(assigned)
    assert notifications == assigned  # one notification per assigned contact
    assert sorted(e.contact_id or 0 for e in events) == contact_ids
