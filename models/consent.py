"""Who may be emailed, and why not: the checks before any message is built (spec §3).

Pure: a contact's CRM row and facts in, an address or a refusal with its reason out. The reason
is what the ledger and the participant's history show for a skipped send.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from models.crm import Contact

MARKETING_PURPOSE = "emarketing"  # the consent purpose that allows marketing email


class Refused(Exception):
    """A check refused the recipient: the send is skipped, with this reason."""


# How the refusals that are the contact's own choice begin (statistics count them apart from
# missing or invalid addresses).
_CONSENT_REFUSALS = ("marked no mailings", "no consent for ", "not subscribed to ")


def is_consent_refusal(reason: str) -> bool:
    """Whether a skipped send's reason is the contact's consent or subscriptions."""
    return reason.startswith(_CONSENT_REFUSALS)


def valid_address(address: str) -> str:
    """The address, normalised; raises ``EmailNotValidError``. Syntax only: no DNS lookups."""
    return validate_email(address, check_deliverability=False).normalized


def marketing_recipient(
    contact: Contact, facts: dict[str, object], subscription_type: str | None
) -> str:
    """The contact's address if marketing email may go to it; raises ``Refused`` otherwise."""
    if contact.retired:
        raise Refused("former employee (retired)")
    if contact.no_mailings:
        raise Refused("marked no mailings")
    if not contact.email:
        raise Refused("no email address")
    try:
        address = valid_address(contact.email)
    except EmailNotValidError as error:
        raise Refused(f"invalid email address {contact.email!r}: {error}") from None
    consents = facts.get("contact.consents")
    if not isinstance(consents, list) or MARKETING_PURPOSE not in consents:
        raise Refused(f"no consent for {MARKETING_PURPOSE}")
    subscriptions = facts.get("contact.subscriptions")
    if subscription_type is not None and (
        not isinstance(subscriptions, list) or subscription_type not in subscriptions
    ):
        raise Refused(f"not subscribed to {subscription_type!r}")
    return address


def notification_recipient(label: str, address: str | None) -> str:
    """The address of one of our own people (``label`` says who) a notification may go to;
    raises ``Refused`` when there is none or it is not an address. Notifications need no
    consent: they go to us, not to the contact."""
    if not address:
        raise Refused(f"{label}: no email address")
    try:
        return valid_address(address)
    except EmailNotValidError as error:
        raise Refused(f"{label}: invalid email address {address!r}: {error}") from None
