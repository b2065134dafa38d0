"""Search attributes every participant carries, so the Temporal UI can filter runs by flow and step.

FlowId, FlowVersion and ContactId are set when a participant starts; FlowStep and
ParticipantStatus are upserted as it moves. The dev stack and the tests register them; on a real
cluster, register them once per namespace:

    temporal operator search-attribute create --namespace default \
        --name FlowId --type Keyword --name FlowVersion --type Int --name FlowStep --type Keyword \
        --name ParticipantStatus --type Keyword --name ContactId --type Int

Then the UI's filter box (or ``temporal workflow list --query``) finds, for example, everyone in
a flow waiting at one step: ``FlowId='welcome' AND FlowStep='nurture-wait' AND
ExecutionStatus='Running'``.
"""

from temporalio.common import SearchAttributeKey

FLOW_ID = SearchAttributeKey.for_keyword("FlowId")
FLOW_VERSION = SearchAttributeKey.for_int("FlowVersion")
FLOW_STEP = SearchAttributeKey.for_keyword("FlowStep")
PARTICIPANT_STATUS = SearchAttributeKey.for_keyword("ParticipantStatus")
CONTACT_ID = SearchAttributeKey.for_int("ContactId")

ALL = (FLOW_ID, FLOW_VERSION, FLOW_STEP, PARTICIPANT_STATUS, CONTACT_ID)
