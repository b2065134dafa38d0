"""Keeping the participants table current: the queryable mirror of each participant workflow."""

from __future__ import annotations

from sqlalchemy import Engine
from temporalio import activity

from models.database import session
from models.engine import Participant
from models.participant import ParticipantState, participant_workflow_id


class ParticipantActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def record_participant(self, state: ParticipantState) -> None:
        """Upsert the participant's row; the workflow is the only writer, so the last call wins."""
        with session(self._engine) as db:
            row = db.get(Participant, state.participant_id) or Participant(
                id=state.participant_id,
                workflow_id=participant_workflow_id(state.flow_id, state.contact_id),
                flow_id=state.flow_id,
                flow_version=state.flow_version,
                contact_id=state.contact_id,
                enrolled_at=state.enrolled_at,
            )
            row.status = state.status.value
            row.current_step = state.current_step
            row.wait_until = state.wait_until
            row.drop_out_reason = state.drop_out_reason
            row.finished_at = state.finished_at
            db.add(row)
