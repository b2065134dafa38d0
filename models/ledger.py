"""The delivery ledger: every external send is claimed here first, so a retry never sends twice.

A send's key is stable across activity retries and continue-as-new (participant, step, visit).
The protocol around one hand-over to a provider (SMTP server, SMS API):

1. ``claim`` — if the key already holds a final outcome, return it and send nothing. Otherwise
   mark it ``sending`` and go ahead.
2. Hand the message over.
3. ``settle`` with the final outcome (sent, bounced, failed, skipped), or ``release`` if the
   hand-over failed in a way that is safe to retry (nothing was accepted).

If a worker dies between 2 and 3 the key stays ``sending``: the provider may or may not have the
message. We then prefer at most once: the next claim returns ``unconfirmed`` and sends nothing,
because a duplicate marketing email or SMS is worse than an unconfirmed one (it is visible in
the ledger and the participant's history).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from models.database import session
from models.engine import Delivery


class DeliveryStatus(StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    bounced = "bounced"
    failed = "failed"
    skipped = "skipped"
    unconfirmed = "unconfirmed"


FINAL = frozenset(
    {
        DeliveryStatus.sent,
        DeliveryStatus.bounced,
        DeliveryStatus.failed,
        DeliveryStatus.skipped,
        DeliveryStatus.unconfirmed,
    }
)


class DeliveryOutcome(BaseModel):
    key: str
    channel: str
    recipient: str
    status: DeliveryStatus
    provider_id: str | None = None
    detail: str | None = None
    already_settled: bool = False  # True when a retry found the outcome of an earlier attempt


def _outcome(row: Delivery, already_settled: bool = False) -> DeliveryOutcome:
    return DeliveryOutcome(
        key=row.key,
        channel=row.channel,
        recipient=row.recipient,
        status=DeliveryStatus(row.status),
        provider_id=row.provider_id,
        detail=row.detail,
        already_settled=already_settled,
    )


def claim(engine: Engine, key: str, channel: str, recipient: str) -> DeliveryOutcome | None:
    """Reserve a send. None means: go ahead and send. An outcome means: it was handled before."""
    for _ in range(2):  # a concurrent first claim of the same key loses the insert race once
        try:
            with session(engine) as db:
                row = db.exec(select(Delivery).where(Delivery.key == key)).first()
                if row is None:
                    db.add(
                        Delivery(key=key, channel=channel, recipient=recipient, status="sending")
                    )
                    return None
                if row.status == DeliveryStatus.sending:
                    row.status = DeliveryStatus.unconfirmed
                    row.detail = "an earlier attempt stopped mid-send; not sent again"
                    db.add(row)
                    return _outcome(row, already_settled=True)
                if row.status in FINAL:
                    return _outcome(row, already_settled=True)
                row.status, row.recipient = DeliveryStatus.sending, recipient
                db.add(row)
                return None
        except IntegrityError:
            continue
    raise RuntimeError(f"could not claim delivery {key!r}")


def settle(
    engine: Engine,
    key: str,
    status: DeliveryStatus,
    provider_id: str | None = None,
    detail: str | None = None,
) -> DeliveryOutcome:
    """Record a final outcome for a claimed send."""
    assert status in FINAL, status
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.key == key)).one()
        row.status, row.provider_id, row.detail = status, provider_id, detail
        db.add(row)
        return _outcome(row)


def release(engine: Engine, key: str, detail: str) -> None:
    """The hand-over failed before the provider accepted anything: the next attempt may send."""
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.key == key)).one()
        row.status, row.detail = DeliveryStatus.pending, detail
        db.add(row)


def record_skip(
    engine: Engine, key: str, channel: str, recipient: str, reason: str
) -> DeliveryOutcome:
    """A send that the checks refused (no address, no consent, …): final, with its reason."""
    claimed = claim(engine, key, channel, recipient)
    if claimed is not None:
        return claimed
    return settle(engine, key, DeliveryStatus.skipped, detail=reason)
