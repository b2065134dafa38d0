"""What the starter, the tracking service and the dev stack do against Temporal and the database.

Enrolling contacts (``enrollment``), taking events in (``ingest``), a flow's life (``lifecycle``:
run, pause, resume, end, delete), storing flow versions (``flows``) and the dry run
(``dry_run``). Client-side code: it starts, signals and asks participant workflows; the worker
lends ``enroll`` and ``ingest`` to the two activities that need them.
"""
