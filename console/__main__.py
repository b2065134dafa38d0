"""``python -m console``: the flows console on its own (the dev stack serves it itself).

    python -m console      # CONSOLE_SECRET, CONSOLE_PORT (8029), DATABASE_URL, TEMPORAL_ADDRESS

Create the first user with ``python starter.py user add EMAIL --role admin``.
"""

import asyncio
import signal

from console.app import create_app
from console.web import ConsoleSettings
from models.database import create_tables, get_engine
from tracking.server import serving
from worker import TASK_QUEUE, connect


async def main() -> None:
    try:
        settings = ConsoleSettings.from_settings(TASK_QUEUE)
    except ValueError as problem:
        raise SystemExit(f"console: {problem}") from None
    engine = get_engine()
    create_tables(engine)
    client = await connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(
        create_app(engine, client, settings), host=settings.host, port=settings.port
    ) as url:
        print(f"console: {url}", flush=True)
        await stop.wait()


asyncio.run(main())
