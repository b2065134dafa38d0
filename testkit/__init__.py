"""What tests and benchmarks share to run the engine for real: Temporal servers from the venv,
the SMTP and SMS peers on free loopback ports, a worker on a task queue of its own, and waiting
with a deadline.

- ``testkit.servers``: ``free_port()``, ``start_dev_server()``, ``start_time_skipping_server()``
- ``testkit.peers``: the SMTP ``Inbox`` and the Twilio-compatible API, running
- ``testkit.workers``: ``new_worker(...)``, ``fresh_task_queue()``
- ``testkit.processes``: the dev server and ``python worker.py`` as processes of their own, and a
  CPU burner (fault tests and the bench's burst and scale-out parts)
- ``testkit.waiting``: ``assert_eventually(fn, timeout=...)``, ``waiting_at(handle, step)``

It needs the dev dependencies (aiosmtpd for the inbox).
"""
