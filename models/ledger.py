"""The delivery ledger: every external send is claimed here first, so a retry never sends twice.

A send's key is stable across activity retries and continue-as-new (participant, step, visit).
The protocol around one hand-over to a provider (SMTP server, SMS API):

1. ``claim`` — if the key already holds a final outcome, return it and send nothing. Otherwise
   the key is ``pending`` (reserved; nothing handed over yet) and the caller prepares the send.
2. ``mark_sending`` — at the point of no return (just before the SMTP server can accept the
   message: the end of DATA; just before the SMS API request), the key becomes ``sending``. Only
   one attempt can make that move, so two attempts running at once never both send.
3. ``settle`` with the final outcome (sent, bounced, failed, skipped), or ``release`` if the
   hand-over failed in a way that is safe to retry (nothing was accepted).

A worker that dies before step 2 leaves the key ``pending``: nothing reached the provider and the
retry sends. One that dies between 2 and 3 leaves it ``sending``: the provider may or may not
have the message. Where the provider can be asked (the SMS API lists what it accepted), the retry
asks it (``interrupted``, ``reopen``); where it cannot (SMTP), we prefer at most once: the next
claim returns ``unconfirmed`` and sends nothing, because a duplicate marketing email is worse than
an unconfirmed one (it is visible in the ledger and the participant's history). Step 2 runs the
hand-over's first act itself (the final dot of DATA) the moment the mark commits, and from step 2
to step 3 the sending attempt defers its own cancellation
(``activities.heartbeat.cancellation_deferred``): a timeout or an ended flow never stops it in
between, so only a process killed in that stretch leaves ``sending`` behind, and only one killed
between the mark's commit and that act loses a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Row, bindparam, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from models.database import fully_synced, session, utcnow
from models.engine import Delivery, Departure
from models.personal_data import mask_email, mask_phone

T = TypeVar("T")


class DeliveryStatus(StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    bounced = "bounced"
    failed = "failed"
    skipped = "skipped"
    unconfirmed = "unconfirmed"
    capped = "capped"  # a frequency cap held it back (models.send_counts)


FINAL = frozenset(
    {
        DeliveryStatus.sent,
        DeliveryStatus.bounced,
        DeliveryStatus.failed,
        DeliveryStatus.skipped,
        DeliveryStatus.unconfirmed,
        DeliveryStatus.capped,
    }
)


class DeliveryOutcome(BaseModel):
    """What a send activity returns, kept in the participant's history: the recipient masked
    (the ledger row holds the address), and masked in the key and the provider's answer too."""

    key: str
    channel: str
    recipient: str
    status: DeliveryStatus
    provider_id: str | None = None
    detail: str | None = None
    already_settled: bool = False  # True when a retry found the outcome of an earlier attempt
    # Set when the checks made at the step's entry (former employee, exclusion list, …) say the
    # participant leaves: nothing was sent nor claimed, and the participant leaves with this.
    leave_reason: str | None = None
    # Set when the send also made the participant's last record, for the finish after it.
    departure: Departure | None = None
    # Set when a frequency cap holds the message back until then and the flow waits for it:
    # nothing was claimed, and the participant sends again from then (status capped).
    retry_at: datetime | None = None

    @classmethod
    def left(cls, key: str, channel: str, reason: str) -> DeliveryOutcome:
        """The participant leaves at the step's entry for ``reason``: nothing sent or claimed."""
        return cls(
            key=key,
            channel=channel,
            recipient="",
            status=DeliveryStatus.skipped,
            detail=reason,
            leave_reason=reason,
        )


def _outcome(row: Mapping[Any, Any], already_settled: bool = False) -> DeliveryOutcome:
    """The outcome a ledger row (its fields by name) says."""
    return masked(
        DeliveryOutcome(
            key=row["key"],
            channel=row["channel"],
            recipient=row["recipient"],
            status=DeliveryStatus(row["status"]),
            provider_id=row["provider_id"],
            detail=row["detail"],
            already_settled=already_settled,
        )
    )


def masked(outcome: DeliveryOutcome) -> DeliveryOutcome:
    """The outcome as a send returns it: its recipient masked, in the key (a notify_sms key ends
    in the number) and in the detail (an SMTP answer may quote the address) too."""
    recipient = outcome.recipient.strip()
    if not recipient:
        return outcome
    shown = _masked_recipient(outcome.channel, recipient)

    def without(text: str) -> str:
        return re.sub(re.escape(recipient), shown, text, flags=re.IGNORECASE)

    detail = outcome.detail
    return outcome.model_copy(
        update={
            "key": without(outcome.key),
            "recipient": shown,
            "detail": None if detail is None else without(detail),
        }
    )


def _masked_recipient(channel: str, recipient: str) -> str:
    """A number or an address masked; a role standing in for a missing one ("our service
    contact") as it is."""
    if channel == "sms" and any(c.isdigit() for c in recipient):
        return mask_phone(recipient)
    if "@" in recipient:
        return mask_email(recipient)
    return recipient


def claiming(engine: Engine, key: str, work: Callable[[Session], T]) -> T:
    """Run ``work``, which claims ``key`` (``claim_in``, ``settle_in``), in a transaction of its
    own: once more when a concurrent first claim of the same key won the insert (the commit then
    raises ``IntegrityError``, and the second run finds that claim)."""
    for _ in range(2):
        try:
            with session(engine) as db:
                return work(db)
        except IntegrityError:
            continue
    raise RuntimeError(f"could not claim delivery {key!r}")


def claim(engine: Engine, key: str, channel: str, recipient: str) -> DeliveryOutcome | None:
    """Reserve a send. None means: go ahead and prepare it (then ``mark_sending`` before the
    hand-over). An outcome means: it was handled before; send nothing."""
    return claiming(engine, key, lambda db: claim_in(db, key, channel, recipient))


def claim_in(db: Session, key: str, channel: str, recipient: str) -> DeliveryOutcome | None:
    """``claim`` inside the caller's transaction (run it with ``claiming``), so that reading
    what the send needs and reserving it take one."""
    connection = db.connection()
    earlier = _earlier(connection, key, channel, recipient, DeliveryStatus.pending)
    if earlier is None:
        return None
    if isinstance(earlier, DeliveryOutcome):
        return earlier
    connection.execute(_RECIPIENT, {"k": key, "to": recipient, "now": utcnow()})
    return None


def known_in(db: Session, key: str) -> bool:
    """Whether an attempt already claimed this send (whatever became of it)."""
    return db.exec(select(Delivery.key).where(Delivery.key == key)).first() is not None


def known_under(db: Session, key: str) -> bool:
    """Whether an attempt already claimed any send keyed under ``key`` (a notify step's, one per
    recipient: ``key/recipient``)."""
    under = col(Delivery.key).startswith(f"{key}/", autoescape=True)
    return db.exec(select(Delivery.key).where(under)).first() is not None


def settle_in(
    db: Session, key: str, channel: str, recipient: str, status: DeliveryStatus, detail: str
) -> DeliveryOutcome:
    """Claim and settle in the caller's transaction a send that ends before any hand-over (a
    refused contact, a message that cannot be built); an earlier outcome wins."""
    assert status in FINAL, status
    connection = db.connection()
    earlier = _earlier(connection, key, channel, recipient, status, detail)
    if isinstance(earlier, DeliveryOutcome):
        return earlier
    if earlier is not None:  # claimed, not settled: settle it now
        connection.execute(
            _SETTLE, {"k": key, "to_status": status, "provider": None, "why": detail}
        )
    return masked(
        DeliveryOutcome(key=key, channel=channel, recipient=recipient, status=status, detail=detail)
    )


# The ledger's statements, built once (SQLAlchemy then reuses their compiled form): they run
# several times for every message. An update sets ``updated_at`` by the column's own default.
_TABLE = SQLModel.metadata.tables[str(Delivery.__tablename__)]
_COLUMNS = _TABLE.c
_FIND = _TABLE.select().where(_COLUMNS.key == bindparam("k"))
_ADD = insert(_TABLE).values(
    key=bindparam("k"),
    channel=bindparam("via"),
    recipient=bindparam("to"),
    status=bindparam("to_status"),
    detail=bindparam("why"),
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
)
_RECIPIENT = (
    update(_TABLE)
    .where(_COLUMNS.key == bindparam("k"))
    .values(recipient=bindparam("to"), updated_at=bindparam("now"))
)
_UNCONFIRMED = (
    update(_TABLE)
    .where(_COLUMNS.key == bindparam("k"), _COLUMNS.status == DeliveryStatus.sending.value)
    .values(status=DeliveryStatus.unconfirmed.value, detail=bindparam("why"))
)
_MARK = (
    update(_TABLE)
    .where(_COLUMNS.key == bindparam("k"), _COLUMNS.status == DeliveryStatus.pending.value)
    .values(status=DeliveryStatus.sending.value, updated_at=bindparam("now"))
)
_SETTLE = (
    update(_TABLE)
    .where(_COLUMNS.key == bindparam("k"))
    .values(
        status=bindparam("to_status"), provider_id=bindparam("provider"), detail=bindparam("why")
    )
    .returning(
        _COLUMNS.key,
        _COLUMNS.channel,
        _COLUMNS.recipient,
        _COLUMNS.status,
        _COLUMNS.provider_id,
        _COLUMNS.detail,
    )
)
_UNFINISHED = "an earlier attempt stopped mid-send; not sent again"


def _earlier(
    connection: Connection,
    key: str,
    channel: str,
    recipient: str,
    status: DeliveryStatus,
    detail: str | None = None,
) -> DeliveryOutcome | Row[Any] | None:
    """What the ledger holds for ``key``: nothing (a row is added with ``status`` and
    ``detail``: None), an earlier outcome that stands (an interrupted hand-over becomes
    ``unconfirmed``), or the row of a claim not settled yet."""
    row = connection.execute(_FIND, {"k": key}).first()
    if row is None:
        values = {"k": key, "via": channel, "to": recipient, "to_status": status, "why": detail}
        connection.execute(_ADD, {**values, "now": utcnow()})
        return None
    if row.status == DeliveryStatus.sending:
        connection.execute(_UNCONFIRMED, {"k": key, "why": _UNFINISHED})
        unconfirmed = {**row._mapping, "status": DeliveryStatus.unconfirmed, "detail": _UNFINISHED}
        return _outcome(unconfirmed, already_settled=True)
    if row.status in FINAL:
        return _outcome(row._mapping, already_settled=True)
    return row


def mark_sending(engine: Engine, key: str, hand_over: Callable[[], None] | None = None) -> bool:
    """The point of no return of a claimed send: True if this attempt may hand it over now.

    False when another attempt got there first (or settled it): send nothing then. ``hand_over``,
    the act that gives the send away, runs the moment the mark is committed, before the
    connection goes back to the pool: a worker killed between the two has handed nothing over
    but left the key ``sending``, so nothing that can wait (a pool check-in, a reset) sits there.
    The mark is on disk before the hand-over, so that not even a power cut can let a retry send
    again what went out."""
    with engine.connect() as opened, fully_synced(opened) as connection:
        moved = connection.execute(_MARK, {"k": key, "now": utcnow()})
        if moved.rowcount != 1:
            connection.rollback()
            return False
        connection.commit()
        if hand_over is not None:
            hand_over()
    return True


def interrupted(engine: Engine, key: str) -> datetime | None:
    """When an attempt that never settled passed the point of no return for this send (the key
    is still ``sending``); None otherwise."""
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.key == key)).first()
    if row is None or row.status != DeliveryStatus.sending:
        return None
    return row.updated_at


def reopen(engine: Engine, key: str, since: datetime, detail: str) -> bool:
    """The provider says an interrupted send (``interrupted`` returned ``since``) never reached
    it: make the key ``pending`` again. False if another attempt changed it meanwhile."""
    with session(engine) as db:
        moved = db.exec(
            update(Delivery)
            .where(
                col(Delivery.key) == key,
                col(Delivery.status) == DeliveryStatus.sending,
                col(Delivery.updated_at) == since,
            )
            .values(status=DeliveryStatus.pending, detail=detail, updated_at=utcnow())
        )
        return bool(moved.rowcount == 1)


def settle(
    engine: Engine,
    key: str,
    status: DeliveryStatus,
    provider_id: str | None = None,
    detail: str | None = None,
) -> DeliveryOutcome:
    """Record a final outcome for a claimed send."""
    assert status in FINAL, status
    with engine.begin() as connection:
        values = {"k": key, "to_status": status, "provider": provider_id, "why": detail}
        return _outcome(connection.execute(_SETTLE, values).one()._mapping)


def release(engine: Engine, key: str, detail: str) -> None:
    """The hand-over failed before the provider accepted anything: the next attempt may send."""
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.key == key)).one()
        row.status, row.detail = DeliveryStatus.pending, detail
        db.add(row)


def settle_unsent(
    engine: Engine, key: str, channel: str, recipient: str, status: DeliveryStatus, detail: str
) -> DeliveryOutcome:
    """A send that ends before any hand-over (a refused contact, a message that cannot be
    built): claimed and settled in one transaction; an earlier outcome wins."""
    return claiming(engine, key, lambda db: settle_in(db, key, channel, recipient, status, detail))


def record_skip(
    engine: Engine, key: str, channel: str, recipient: str, reason: str
) -> DeliveryOutcome:
    """A send that the checks refused (no address, no consent, …): final, with its reason."""
    return settle_unsent(engine, key, channel, recipient, DeliveryStatus.skipped, reason)
