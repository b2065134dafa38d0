"""Counting a contact's marketing messages against the frequency caps, exactly, while claiming.

``claim_within_caps`` replaces the ledger's ``claim_in`` for a capped send, inside the same
transaction (run it with ``models.ledger.claiming``). It first makes the transaction the only
one counting this contact's messages on this channel (``serialize_on`` a lock row per contact and
channel: on PostgreSQL its row lock, held to commit; on SQLite the single writer, which the lock's
UPDATE takes), then counts the contact's ``CountedSend`` rows whose deliveries are on their way or
sent, and either claims the delivery and counts it, or holds it back. Two flows sending to one
contact in the same second therefore count one after the other: the second sees the first's
message, and the caps are never exceeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlmodel import Session, col, select

from models.engine import CountedSend, Delivery, serialize_on
from models.frequency_caps import (
    Capping,
    FrequencyCap,
    counting_zone,
    held_until,
    window_start,
)
from models.ledger import DeliveryOutcome, DeliveryStatus, claim_in, known_in, settle_in

# A counted message stops counting when its delivery ends without reaching the provider
# (failed before the hand-over, skipped, capped); one that bounced was handed over and counts.
COUNTING = (
    DeliveryStatus.pending,
    DeliveryStatus.sending,
    DeliveryStatus.sent,
    DeliveryStatus.unconfirmed,
    DeliveryStatus.bounced,
)


def claim_within_caps(
    db: Session,
    key: str,
    channel: str,
    recipient: str,
    *,
    contact_id: int,
    capping: Capping | None,
    caps: Sequence[FrequencyCap],
    facts: Mapping[str, object],
) -> DeliveryOutcome | None:
    """``claim_in``, held to ``caps`` (the channel's) when ``capping`` says the message is one
    they count, in the calendar of the contact's zone (``counting_zone`` of the contact's
    ``facts``). None: claimed, send it. An outcome: an earlier attempt's; or the message is
    capped — settled ``capped`` (``when_capped`` skip), or, to wait, returned with ``retry_at``
    and nothing claimed. A retry of a claimed send is never capped by its own count."""
    caps = [cap for cap in caps if cap.channel == channel]
    if capping is None or not caps:
        return claim_in(db, key, channel, recipient)
    serialize_on(db, f"frequency-caps/{channel}/{contact_id}")
    if known_in(db, key):
        return claim_in(db, key, channel, recipient)
    now = capping.at
    zone = counting_zone(capping.time_zone, facts)
    since = min(window_start(now, cap, zone) for cap in caps)
    counted = db.exec(
        select(CountedSend.counted_at)
        .join(Delivery, col(Delivery.key) == col(CountedSend.key))
        .where(
            col(CountedSend.contact_id) == contact_id,
            col(CountedSend.channel) == channel,
            col(CountedSend.counted_at) >= since,
            col(Delivery.status).in_(COUNTING),
        )
    ).all()
    held = held_until(now, counted, caps, zone)
    if held is None:
        claimed = claim_in(db, key, channel, recipient)
        if claimed is None:
            db.add(CountedSend(key=key, contact_id=contact_id, channel=channel, counted_at=now))
        return claimed
    until, cap = held
    detail = f"capped: {cap}"
    if capping.when_capped == "skip":
        return settle_in(db, key, channel, recipient, DeliveryStatus.capped, detail)
    return DeliveryOutcome(
        key=key,
        channel=channel,
        recipient="",
        status=DeliveryStatus.capped,
        detail=f"{detail}; waits until {until.isoformat()}",
        retry_at=until,
    )
