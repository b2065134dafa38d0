"""The worker processes a part starts beside itself (``testkit.processes``), and what the part
reads from them: their CPU and the overload their logs report."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import SLOW_TASK, TASK_NOT_FOUND, cpu_seconds, process_tree
from testkit.processes import WorkerProcess


def worker_cpu_seconds(worker: WorkerProcess) -> float:
    """CPU seconds the worker has used so far (it starts no children of its own)."""
    return sum(cpu_seconds(pid) for pid in process_tree(worker.pid)) if worker.running else 0.0


def overload(worker: WorkerProcess) -> tuple[int, int]:
    """Workflow tasks over 5 s and workflow tasks timed out, from the worker's log."""
    text = worker.output()
    return text.count(SLOW_TASK), text.count(TASK_NOT_FOUND)


@contextmanager
def running_workers(
    settings: dict[str, str], directory: Path, count: int
) -> Iterator[list[WorkerProcess]]:
    """``count`` worker processes on the same settings, each with its own log; stopped on exit."""
    workers = [WorkerProcess(settings, directory / f"worker-{i}.log") for i in range(count)]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
