"""The processes a fault test or a bench part starts, stops and kills: the Temporal dev server,
``python worker.py`` as an operator runs it, and a CPU burner.

Each is a real child process in a session of its own, so a SIGKILL is the real thing and never
reaches the test run; every one is ended by its pid, never by a name pattern.
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

from temporalio.client import Client

from models import search_attributes as sa
from models.database import PROJECT_ROOT
from testkit.peers import TWILIO_SID, TWILIO_TOKEN, Inbox
from testkit.servers import LOOPBACK, TEMPORAL_CLI, free_port
from worker import connect

# How long a process gets to come up or to stop before the test gives up on it.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ChildProcess:
    """One command, (re)started on demand, its output appended to one log file."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_offset = 0  # where this start's output begins in the log
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} was never started"
        return self._process.pid

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self._close_log()
        self._log_handle = self.log.open("ab")
        self._log_offset = self._log_handle.tell()
        self._log_handle.write(f"\n=== {self.name} start #{self.starts + 1}\n".encode())
        self._log_handle.flush()
        self._process = subprocess.Popen(
            self.command(),
            cwd=PROJECT_ROOT,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals meant for the test run never reach it
        )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, whatever it was doing."""
        self._signal(signal.SIGKILL)
        self._reap(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time. Safe to call when not running."""
        if self._process is None:
            return
        if self.running:
            self._signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        self._reap(STOP_TIMEOUT)
        self._close_log()

    def output(self) -> str:
        """What this start of the process printed so far."""
        with self.log.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, signum: int) -> None:
        if self.running:
            os.kill(self.pid, signum)

    def _reap(self, timeout: float) -> None:
        assert self._process is not None
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as stuck:
            raise AssertionError(f"{self.name} (pid {self.pid}) did not exit") from stuck

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


class TemporalServer(ChildProcess):
    """``temporal server start-dev`` keeping its state in a SQLite file: it can be stopped and
    started again on the same port, and running workflows carry on."""

    def __init__(self, db_file: Path, log: Path) -> None:
        super().__init__("temporal", log)
        self.db_file = db_file
        self.port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(TEMPORAL_CLI),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db-filename",
            str(self.db_file),
            "--log-level",
            "warn",
            *(
                f"--search-attribute={key.name}={key.indexed_value_type.name.title()}"
                for key in sa.ALL
            ),
        ]

    async def client(self, timeout: float = START_TIMEOUT) -> Client:
        """A client once the frontend answers and the namespace is served (about 5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise AssertionError(f"the Temporal server exited:\n{self.tail()}")
            try:
                client = await connect(self.address, "default")
                await client.count_workflows()  # the port opens before visibility answers
                return client
            except Exception as error:  # not ready yet: refused, unavailable, no namespace
                if time.monotonic() > deadline:
                    raise AssertionError(f"the Temporal server is not ready: {error}") from error
            await asyncio.sleep(0.25)


class WorkerProcess(ChildProcess):
    """``python worker.py`` with its settings in the environment, as an operator runs it."""

    READY = "worker: polling task queue"

    def __init__(self, settings: dict[str, str], log: Path) -> None:
        super().__init__("worker", log)
        self.settings = settings

    def command(self) -> list[str]:
        return [sys.executable, "-u", "worker.py"]

    def environment(self) -> dict[str, str]:
        # A metrics port of its own on every start: the default 9464 may be taken by a dev stack.
        return {**os.environ, **self.settings, "METRICS_PORT": str(free_port())}

    async def polling(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until this start of the worker polls its task queue."""
        deadline = time.monotonic() + timeout
        while self.READY not in self.output():
            if not self.running:
                raise AssertionError(f"the worker exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start polling:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def restart(self) -> None:
        self.start()
        await self.polling()


def worker_environment(
    address: str,
    task_queue: str,
    database_url: str,
    inbox: Inbox,
    sms_api: str,
    smtp_timeout: float | None = None,
) -> dict[str, str]:
    """What ``python worker.py`` reads from its environment, pointed at these peers (the SMTP
    timeout: the inbox's, unless given)."""
    return {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": "default",
        "TASK_QUEUE": task_queue,
        "DATABASE_URL": database_url,
        "SMTP_HOST": LOOPBACK,
        "SMTP_PORT": str(inbox.port),
        "SMTP_TIMEOUT": str(inbox.smtp_timeout if smtp_timeout is None else smtp_timeout),
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_API_BASE": sms_api,
        "SMS_DEFAULT_REGION": "SE",
    }


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
