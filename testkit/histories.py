"""Reading a workflow's history in tests and the bench: which activities it scheduled on which
task queue, and the local activities its markers record."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from temporalio.api.history.v1 import HistoryEvent

LOCAL_ACTIVITY_MARKER = "core_local_activity"


def scheduled_activities(events: Iterable[HistoryEvent]) -> list[tuple[str, str]]:
    """(activity type, task queue) of each activity task scheduled, in order."""
    return [
        (
            e.activity_task_scheduled_event_attributes.activity_type.name,
            e.activity_task_scheduled_event_attributes.task_queue.name,
        )
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def local_activity(event: HistoryEvent) -> dict[str, Any] | None:
    """What a local activity's marker records (``activity_type``, ``attempt``, …), or None for
    any other event. The SDK core writes it as JSON in the marker's ``data``."""
    if not event.HasField("marker_recorded_event_attributes"):
        return None
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != LOCAL_ACTIVITY_MARKER or "data" not in marker.details:
        return None
    data: dict[str, Any] = json.loads(marker.details["data"].payloads[0].data)
    return data


def local_activities(events: Iterable[HistoryEvent]) -> list[str]:
    """The activity type of each local activity the history records, in order."""
    return [found["activity_type"] for e in events if (found := local_activity(e)) is not None]
