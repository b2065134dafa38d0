"""Reading a workflow's history in tests and the bench: which activities it scheduled on which
task queue, and the local activities its markers record."""

from __future__ import annotations

from collections.abc import Iterable

from temporalio.api.history.v1 import HistoryEvent

from control.histories import local_activity


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


def local_activities(events: Iterable[HistoryEvent]) -> list[str]:
    """The activity type of each local activity the history records, in order."""
    return [found["activity_type"] for e in events if (found := local_activity(e)) is not None]
