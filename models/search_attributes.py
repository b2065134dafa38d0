"""Search attributes every participant carries, so the Temporal UI can filter runs by flow and step.

FlowId, FlowVersion, ContactId and ParticipantStatus are set when a participant starts, and
FlowStep too when it goes straight to its first step; FlowStep is upserted where the participant
waits (and, for participants started before, at every step), and both as it leaves. The dev
stack and the tests register them; on a real cluster, register them once per namespace:

    temporal operator search-attribute create --namespace default \
        --name FlowId --type Keyword --name FlowVersion --type Int --name FlowStep --type Keyword \
        --name ParticipantStatus --type Keyword --name ContactId --type Int

Then the UI's filter box (or ``temporal workflow list --query``) finds, for example, everyone in
a flow waiting at one step: ``FlowId='welcome' AND FlowStep='nurture-wait' AND
ExecutionStatus='Running'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from models.engine import ParticipantStatus

if TYPE_CHECKING:
    from temporalio.client import Client

    from models.flow import Flow

FLOW_ID = SearchAttributeKey.for_keyword("FlowId")
FLOW_VERSION = SearchAttributeKey.for_int("FlowVersion")
FLOW_STEP = SearchAttributeKey.for_keyword("FlowStep")
PARTICIPANT_STATUS = SearchAttributeKey.for_keyword("ParticipantStatus")
CONTACT_ID = SearchAttributeKey.for_int("ContactId")

ALL = (FLOW_ID, FLOW_VERSION, FLOW_STEP, PARTICIPANT_STATUS, CONTACT_ID)


def at_start(
    flow: Flow, version: int, contact_id: int, *, paused: bool = False
) -> TypedSearchAttributes:
    """A participant's attributes as it starts, active. FlowStep too when it enters the first
    step at once (no scheduled start, flow not paused): that spares it an upsert there."""
    pairs: list[SearchAttributePair[str] | SearchAttributePair[int]] = [
        SearchAttributePair(FLOW_ID, flow.id),
        SearchAttributePair(FLOW_VERSION, version),
        SearchAttributePair(CONTACT_ID, contact_id),
        SearchAttributePair(PARTICIPANT_STATUS, ParticipantStatus.active.value),
    ]
    if not paused and flow.scheduled_start is None:
        pairs.append(SearchAttributePair(FLOW_STEP, flow.start))
    return TypedSearchAttributes(pairs)


async def register_search_attributes(client: Client) -> None:
    """Register every attribute above in the client's namespace; those already there stay.

    The time-skipping test server takes no search attributes when it starts, and fails the
    workflow task of a participant that upserts an unknown one (the participant then hangs).
    """
    request = AddSearchAttributesRequest(
        namespace=client.namespace,
        search_attributes={
            key.name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{key.indexed_value_type.name}")
            for key in ALL
        },
    )
    try:
        await client.operator_service.add_search_attributes(request)
    except RPCError as error:
        already = error.status is RPCStatusCode.ALREADY_EXISTS or "already" in str(error).lower()
        if not already:
            raise
