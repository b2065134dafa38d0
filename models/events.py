"""Events: what happens to a contact outside its participant workflows (spec §5).

Forms submitted, tracked links clicked, emails opened and CRM changes enter the engine as one
``FlowEvent``. Each is recorded once in the ``crm_events`` table (idempotent by ``event_id``) and
then reaches every participant it concerns as the ``event`` signal, and every running flow whose
triggers it matches. Participants keep recent events in their state, so waits, splits and success
criteria decide from their own history, deterministically.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class EventKind(StrEnum):
    form_submitted = "form_submitted"
    link_clicked = "link_clicked"
    email_opened = "email_opened"
    contact_created = "contact_created"
    contact_updated = "contact_updated"
    sale_created = "sale_created"
    sale_sold = "sale_sold"
    sale_lost = "sale_lost"
    added_to_project = "added_to_project"
    added_to_selection = "added_to_selection"
    request_created = "request_created"
    follow_up_created = "follow_up_created"


class FlowEvent(BaseModel):
    event_id: str = Field(min_length=1, max_length=200, description="Idempotency key")
    kind: EventKind
    contact_id: int
    occurred_at: datetime
    # Where a tracked email's link or pixel came from: the flow and its send_email step.
    flow_id: str | None = None
    step_id: str | None = None
    link: str | None = None
    form_id: int | None = None
    selection_id: int | None = None
    project_id: int | None = None
    sale_id: int | None = None
    data: dict[str, str] = Field(default={}, description="Form fields, as submitted")
    by_import: bool = Field(
        default=False, description="Created/updated by import or bulk update: triggers ignore it"
    )
