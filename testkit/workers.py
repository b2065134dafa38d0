"""The engine's worker for a test or a benchmark: built as worker.py builds it, on a task queue
of its own, so that one test's workflows never reach another's worker."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client

from models.sending import SendingSettings
from worker import EngineWorker, build_worker


def fresh_task_queue(prefix: str = "tq") -> str:
    return f"{prefix}-{uuid.uuid4()}"


def new_worker(
    client: Client,
    engine: Engine,
    *,
    activities: Sequence[Callable[..., Any]] | None = None,
    task_queue: str | None = None,
    executor: ThreadPoolExecutor | None = None,
    sending: SendingSettings | None = None,
) -> EngineWorker:
    """worker.py's worker on ``task_queue``, or on a new one (``worker.task_queue`` names it),
    with its channels' workers; ``activities`` replaces the real ones, e.g. with stand-ins of
    the same names."""
    return build_worker(
        client,
        engine,
        task_queue=task_queue or fresh_task_queue(),
        activities=activities,
        executor=executor,
        sending=sending,
    )
