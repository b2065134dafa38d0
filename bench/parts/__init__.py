"""One module per benchmark part; each has ``NAME``, ``TITLE`` and ``async def run(options)``."""
