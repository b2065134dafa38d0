"""Processes a part starts beside itself: ``python worker.py`` as an operator runs it, and a CPU
burner that takes one core.

Each is a child in a session of its own, ended by its pid (SIGTERM, then SIGKILL after a bound),
never by a name pattern.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from bench.common import SLOW_TASK, TASK_NOT_FOUND, BenchTimeout, cpu_seconds, process_tree
from models.database import PROJECT_ROOT
from testkit.peers import TWILIO_SID, TWILIO_TOKEN, Inbox
from testkit.servers import LOOPBACK, free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def worker_environment(
    address: str, task_queue: str, database_url: str, inbox: Inbox
) -> dict[str, str]:
    """What ``python worker.py`` reads from its environment, pointed at the part's peers (the
    SMS API is never reached: the flows measured have no SMS step)."""
    return {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": "default",
        "TASK_QUEUE": task_queue,
        "DATABASE_URL": database_url,
        "SMTP_HOST": LOOPBACK,
        "SMTP_PORT": str(inbox.port),
        "SMTP_TIMEOUT": str(inbox.smtp_timeout),
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_API_BASE": f"http://{LOOPBACK}:9",
        "SMS_DEFAULT_REGION": "SE",
    }


class WorkerProcess:
    """``python -u worker.py`` at its defaults, its output in one log file."""

    READY = "worker: polling task queue"

    def __init__(self, settings: dict[str, str], log: Path) -> None:
        self.settings = settings
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._handle: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "the worker was never started"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        self._handle = self.log.open("ab")
        # A metrics port of its own: the default one may be taken by a dev stack.
        environment = {**os.environ, **self.settings, "METRICS_PORT": str(free_port())}
        self._process = subprocess.Popen(
            [sys.executable, "-u", "worker.py"],
            cwd=PROJECT_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def polling(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.READY not in self.output():
            if not self.running:
                raise RuntimeError(f"the worker exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchTimeout(f"the worker did not start polling:\n{self.tail()}")
            await asyncio.sleep(0.1)

    def cpu(self) -> float:
        """CPU seconds the worker has used so far (it starts no children of its own)."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.pid)) if self.running else 0.0

    def stop(self) -> None:
        """SIGTERM (the worker finishes in-flight activities), then SIGKILL after a bound."""
        if self._process is not None and self.running:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._process.wait(timeout=STOP_TIMEOUT)
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def overload(self) -> tuple[int, int]:
        """Workflow tasks over 5 s and workflow tasks timed out, from the worker's log."""
        text = self.output()
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


@contextmanager
def cpu_burner() -> Iterator[int]:
    """Another process spinning on one core for as long as the block runs; yields its pid."""
    burner = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield burner.pid
    finally:
        burner.kill()
        burner.wait(timeout=STOP_TIMEOUT)
