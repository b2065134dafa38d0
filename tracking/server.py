"""Serving the tracking app with uvicorn: ``python -m tracking``, the dev stack and the tests.

    python -m tracking          # TRACKING_SECRET, TRACKING_PORT (8027), TRACKING_BASE_URL, ...

It listens at once, whether or not Temporal answers yet: clicks, opens and forms are recorded
meanwhile and reach the participants once it does (``tracking.delivery``). The server bounds what
a client may hold: request headers at most ``MAX_HEADER_BYTES``, all there within
``HEADER_SECONDS`` of the connection (or of the previous response on a kept-alive one); an idle
connection closed after ``KEEP_ALIVE_SECONDS``; at most ``MAX_CONNECTIONS`` at once (503 beyond).

Stops cleanly on Ctrl-C or SIGTERM: open requests and background deliveries finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from models.database import create_tables, get_engine
from tracking.app import MAX_HEADER_BYTES, TrackingSettings, create_app
from worker import TASK_QUEUE, connect

HEADER_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 1_000


class _Embedded(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to whoever runs it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _HeaderDeadline(H11Protocol):
    """HTTP/1.1 that closes a connection whose request headers do not arrive in time (uvicorn
    has no such limit of its own: a client sending a byte now and then would hold a connection
    for ever)."""

    header_seconds = HEADER_SECONDS
    _deadline: asyncio.TimerHandle | None = None
    _waiting_after: object = None  # the request cycle before the one being waited for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._wait_for_headers(previous=None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check_headers()

    def on_response_complete(self) -> None:
        previous = self.cycle
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing():
            self._wait_for_headers(previous)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _wait_for_headers(self, previous: object) -> None:
        self._stop_waiting()
        self._waiting_after = previous
        self._deadline = self.loop.call_later(self.header_seconds, self._too_slow)
        self._check_headers()

    def _check_headers(self) -> None:
        # A new request cycle begins once h11 has read a request's headers in full.
        if self._deadline is not None and self.cycle is not self._waiting_after:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp, *, host: str, port: int, header_seconds: float = HEADER_SECONDS
) -> AsyncIterator[str]:
    """Serve ``app`` on host:port in this event loop until the block ends; yields the base URL."""
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"header_seconds": header_seconds})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
        server_header=False,
    )
    server = _Embedded(config)
    task = asyncio.create_task(server.serve(), name=f"tracking service :{port}")
    try:
        while not server.started:
            if task.done():  # e.g. the port is taken
                task.result()
                raise RuntimeError(f"the tracking service did not start on {host}:{port}")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


async def main() -> None:
    try:
        settings = TrackingSettings.from_settings(TASK_QUEUE)
    except ValueError as problem:
        raise SystemExit(f"tracking: {problem}") from None
    engine = get_engine()
    create_tables(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Temporal may come up later than this service (the dev stack), or be down for a while: the
    # app connects in the background and records events meanwhile.
    app = create_app(engine, connect, settings)
    async with serving(app, host=settings.host, port=settings.port) as url:
        print(f"tracking: serving on {url} (links point at {settings.links.base_url})", flush=True)
        await stop.wait()
        print("tracking: stopping", flush=True)
