"""Search attributes every participant carries, so the Temporal UI can filter runs by flow and step.

On a real cluster, register them once:
``temporal operator search-attribute create --name FlowId --type Keyword`` (and likewise below).
"""

from temporalio.common import SearchAttributeKey

FLOW_ID = SearchAttributeKey.for_keyword("FlowId")
FLOW_VERSION = SearchAttributeKey.for_int("FlowVersion")
FLOW_STEP = SearchAttributeKey.for_keyword("FlowStep")
PARTICIPANT_STATUS = SearchAttributeKey.for_keyword("ParticipantStatus")
CONTACT_ID = SearchAttributeKey.for_int("ContactId")

ALL = (FLOW_ID, FLOW_VERSION, FLOW_STEP, PARTICIPANT_STATUS, CONTACT_ID)
