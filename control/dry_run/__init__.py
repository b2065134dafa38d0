"""A dry run: one contact through a flow on Temporal's time-skipping test server, nothing performed.

The real participant workflow runs against stand-ins of its activities, so waits, working days,
sending windows and branches behave exactly as in production while months pass in seconds. The
parts:

* ``events``    — what the contact does and when (``--event link_clicked@2d,step=welcome``);
* ``stand_ins`` — the activities: the read-only ones for real, the message activities as
  stand-ins that make the real checks and capture instead of sending, everything else captured;
* ``run``       — the run on a private time-skipping server, planned events signalled on time;
* ``timeline``  — the participant's story read back from its histories, and its text.
"""

from control.dry_run.events import PlannedEvent
from control.dry_run.run import DryRunStuck, UnknownContact, dry_run
from control.dry_run.timeline import DryRun, TimelineEntry, render_timeline

__all__ = [
    "DryRun",
    "DryRunStuck",
    "PlannedEvent",
    "TimelineEntry",
    "UnknownContact",
    "dry_run",
    "render_timeline",
]
