"""Example scripts, used by flows/every-step.json."""

from __future__ import annotations

import logging

from scripts import ScriptContext, script

log = logging.getLogger(__name__)


@script("sync_webinar_attendee")
async def sync_webinar_attendee(context: ScriptContext) -> str:
    """Hand a webinar attendee to the customer portal. Here: log what would be synced."""
    email = context.contact.get("contact.email")
    company = context.contact.get("company.name")
    log.info("portal sync for contact %s <%s> of %s", context.contact_id, email, company)
    # The result is kept in the Script workflow's history: ids, not the contact's data.
    return f"synced contact {context.contact_id}"
