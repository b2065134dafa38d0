"""What the tracking service takes from the open internet, and how fast.

- ``RequestLimit``: headers over the limit get 431; a body larger than the limit gets 413
  before it is read whole (at once when its ``Content-Length`` says so, otherwise as soon as that
  many bytes came in), and one that does not arrive in time gets 408.
- ``RateLimit``: requests per token and minute; one over gets 429.

Slow request headers are the server's business (``tracking.server``): h11 holds at most 16 KiB
of an incomplete request; what arrived whole is checked here.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestLimit:
    """ASGI middleware: at most ``max_header_bytes`` of headers and ``max_bytes`` of body, all of
    the body within ``read_seconds`` of the request's start.

    A body that breaks either limit makes reading it raise ``HTTPException`` (413 or 408), which
    Starlette answers; the rest of such a body is never read.
    """

    def __init__(
        self, app: ASGIApp, *, max_header_bytes: int, max_bytes: int, read_seconds: float
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_bytes = max_bytes
        self.read_seconds = read_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if sum(len(name) + len(value) for name, value in headers) > self.max_header_bytes:
            text = f"The request headers are larger than {self.max_header_bytes} bytes.\n"
            await PlainTextResponse(text, status_code=431)(scope, receive, send)
            return
        declared = dict(headers).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            too_large = PlainTextResponse(self._too_large, status_code=413)
            await too_large(scope, receive, send)
            return
        deadline = time.monotonic() + self.read_seconds
        received = 0
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # afterwards only a disconnect can come: no deadline for that
                return await receive()
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, "The request body came too slowly.\n") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)

    @property
    def _too_large(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes.\n"


class RateLimit:
    """At most ``per_minute`` requests per key in each minute, in this process.

    Minutes are fixed windows and every count starts again with the next one, so the memory held
    is the keys of one minute; keys are hashed, so a long token costs no more than a short one.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._minute = -1
        self._counts: dict[bytes, int] = {}

    def allow(self, key: str) -> bool:
        minute = int(time.monotonic() // 60)
        if minute != self._minute:
            self._minute = minute
            self._counts.clear()
        hashed = hashlib.sha256(key.encode("utf-8", "replace")).digest()[:16]
        count = self._counts.get(hashed, 0) + 1
        self._counts[hashed] = count
        return count <= self.per_minute
