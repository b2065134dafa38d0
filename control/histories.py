"""Reading a participant's history outside the workflow: the local activities its markers
record (the dry run's timeline; the tests and the bench read them too)."""

from __future__ import annotations

import json
from typing import Any

from temporalio.api.history.v1 import HistoryEvent

LOCAL_ACTIVITY_MARKER = "core_local_activity"


def local_activity(event: HistoryEvent) -> dict[str, Any] | None:
    """What a local activity's marker records (``activity_id``, ``activity_type``, ``attempt``,
    …), or None for any other event. The SDK core writes it as JSON in the marker's ``data``."""
    if not event.HasField("marker_recorded_event_attributes"):
        return None
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != LOCAL_ACTIVITY_MARKER or "data" not in marker.details:
        return None
    data: dict[str, Any] = json.loads(marker.details["data"].payloads[0].data)
    return data
