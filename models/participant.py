"""A participant: one contact travelling one flow version. What the workflow is given and keeps."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from models.engine import ParticipantStatus, WaitReason
from models.events import FlowEvent
from models.flow import Flow
from models.time_zones import RecipientZone


def participant_workflow_id(flow_id: str, contact_id: int) -> str:
    """Readable and deterministic: the same contact can never be active twice in one flow."""
    return f"flow-{flow_id}-contact-{contact_id}"


class Visit(BaseModel):
    step: str
    entered_at: datetime
    outcome: str = ""


class KeptVersion(BaseModel):
    """A resume offered a version this participant could not take, so it keeps its own."""

    version: int  # the version it keeps
    offered: int  # the version it was offered
    reason: str


class ParticipantState(BaseModel):
    """What a participant carries across continue-as-new; the ``state`` query returns it."""

    participant_id: str
    flow_id: str
    flow_version: int
    contact_id: int
    status: ParticipantStatus = ParticipantStatus.active
    current_step: str | None = None
    wait_until: datetime | None = None
    waiting_for: WaitReason | None = Field(
        default=None, description="Why a message step waits (none: it does not, or another step)"
    )
    drop_out_reason: str | None = None
    enrolled_at: datetime
    finished_at: datetime | None = None
    steps_taken: int = 0
    visits: dict[str, int] = Field(
        default={}, description="Times each step was entered: part of every send's ledger key"
    )
    trail: list[Visit] = Field(default=[], description="The most recent steps, newest last")
    events: list[FlowEvent] = Field(
        default=[], description="Events that reached this participant, newest last (bounded)"
    )
    left_waits: dict[str, datetime] = Field(
        default={}, description="When each wait_for_action step was last left"
    )
    success: bool = Field(default=False, description="A success criterion was met")
    paused: bool = Field(default=False, description="The flow is paused: frozen where it is")
    kept_version: KeptVersion | None = Field(
        default=None, description="The last resume's version could not be taken: which, and why"
    )
    recipient_zone: RecipientZone | None = Field(
        default=None,
        description="The contact's time zone, read once when a flow with a recipient clock "
        "first needs it",
    )

    def without_form_data(self) -> ParticipantState:
        """The state as it leaves the workflow (records, continue-as-new, its result): events
        that were signalled with their form data, without it (``crm_events`` keeps it)."""
        if not any(event.data for event in self.events):
            return self
        return self.model_copy(update={"events": [event.reference() for event in self.events]})


class Resume(BaseModel):
    """The ``resume`` signal: the flow version to continue with (edits made while paused)."""

    flow: Flow | None = None
    flow_version: int | None = None


class Suggestion(BaseModel):
    """A hand-off: suggest the contact for another flow, whose own rules decide."""

    flow_id: str
    contact_id: int


class Standing(BaseModel):
    """What the checks before every step found (spec §8): None fields mean all is well."""

    leave_reason: str | None = None


class Enrollment(BaseModel):
    """The participant workflow's input: the pinned flow version and where to pick up."""

    flow: Flow
    flow_version: int
    contact_id: int
    state: ParticipantState | None = Field(
        default=None, description="Set when continuing as new; absent on enrollment"
    )
    paused: bool = Field(default=False, description="Enrolled while the flow is paused: queue")
    success: bool = Field(
        default=False,
        description="It met a success criterion as it was enrolled: it counts as a success",
    )
    steps_per_run: int = Field(
        default=1000, ge=1, description="Continue as new after this many steps (or when suggested)"
    )
    behaviour: int = Field(
        default=0,
        ge=0,
        description="The engine behaviour the participant was started with, pinned as its flow "
        "version is (workflows.participant.BEHAVIOUR); 0: as the patches in its history say",
    )
