"""``python -m codec_server``: the codec server on its own (the dev stack serves it itself).

    python -m codec_server      # PAYLOAD_KEYS, CODEC_SERVER_TOKEN, CODEC_SERVER_PORT (8028)

Point the Temporal Web UI at ``http://<host>:<port>/codecs`` (``temporal server start-dev
--ui-codec-endpoint``, or the UI server's ``codec.endpoint``) and the CLI with
``--codec-endpoint http://<host>:<port>/codecs --codec-auth "Bearer <token>"``.
"""

import asyncio
import signal

from codec_server.app import CodecServerSettings, create_app
from tracking.server import serving


async def main() -> None:
    try:
        settings = CodecServerSettings.from_settings()
    except ValueError as problem:
        raise SystemExit(f"codec server: {problem}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(create_app(settings), host=settings.host, port=settings.port) as url:
        print(f"codec server: {url}/codecs (keys {', '.join(settings.keyring.ids)})")
        await stop.wait()


asyncio.run(main())
