"""Serving the tracking app with uvicorn: ``python -m tracking``, the dev stack and the tests.

    python -m tracking          # TRACKING_SECRET, TRACKING_PORT (8027), TRACKING_BASE_URL, ...

Stops cleanly on Ctrl-C or SIGTERM: open requests and background ingests finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp
from temporalio.client import Client

from models.database import create_tables, get_engine
from tracking.app import TrackingSettings, create_app
from worker import TASK_QUEUE, connect


class _Embedded(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to whoever runs it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, *, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on host:port in this event loop until the block ends; yields the base URL."""
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="warning")
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


async def _connect_when_up() -> Client:
    # Started beside the Temporal server (the dev stack), it may come up first: keep trying.
    for _ in range(120):
        try:
            return await connect()
        except RuntimeError:
            await asyncio.sleep(0.5)
    raise SystemExit("tracking: the Temporal server cannot be reached")


async def main() -> None:
    try:
        settings = TrackingSettings.from_settings(TASK_QUEUE)
    except ValueError as problem:
        raise SystemExit(f"tracking: {problem}") from None
    engine = get_engine()
    create_tables(engine)
    client = await _connect_when_up()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(engine, client, settings)
    async with serving(app, host=settings.host, port=settings.port) as url:
        print(f"tracking: serving on {url} (links point at {settings.links.base_url})")
        await stop.wait()
        print("tracking: stopping")
