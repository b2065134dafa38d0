import asyncio

from tracking.server import main

asyncio.run(main())
