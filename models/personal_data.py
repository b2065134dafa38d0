"""How much of a contact operators see outside the CRM: in Temporal summaries, dry runs, logs.

Workflow summaries and histories are kept for as long as the cluster keeps them and are read by
whoever can open the Temporal UI, so they carry just enough to recognise a contact: a first name
and an initial, the first letter of an address and its domain, the last digits of a number.
"""

from __future__ import annotations


def short_name(first_name: str, last_name: str) -> str:
    """'Karin Svensson' -> 'Karin S.'; a missing part is left out."""
    first, last = first_name.strip(), last_name.strip()
    initial = f"{last[0]}." if last else ""
    return " ".join(part for part in (first, initial) if part)


def mask_email(address: str) -> str:
    """'karin.svensson@example.com' -> 'k…@example.com': the domain tells operators enough."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        return "…"
    return f"{local[0]}…@{domain}"


def mask_text(text: str) -> str:
    """'Svensson' -> 'S…': a contact's free-text value, recognisable to whoever knows it."""
    stripped = text.strip()
    return f"{stripped[0]}…" if stripped else ""


def mask_phone(number: str) -> str:
    """'+46701234567' -> '…4567'."""
    digits = [c for c in number if c.isdigit()]
    return "…" + "".join(digits[-4:]) if len(digits) > 4 else "…"
