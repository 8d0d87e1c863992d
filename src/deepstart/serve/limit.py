"""A request-body size limit that counts the bytes as they arrive (ASGI middleware).

Starlette's multipart parser puts an uploaded file of any size into a temporary file before a
route runs, and a ``Content-Length`` header may be missing (chunked uploads) or wrong. So the
body is read here first, counting: past ``max_bytes`` the request is answered 413 and the app
never sees it. A body within the limit is held in memory and handed on unchanged, so memory
is bounded by ``max_bytes`` per request in flight.

A refused body is drained (read and dropped, up to :data:`DRAIN_BYTES` more) before the
answer, because a client still sending, as browsers and Python's ``http.client`` do,
may otherwise see a reset connection instead of the 413. A client that announced a too-large
body and waits for ``100 Continue`` gets the 413 at once.

Example:
    >>> app = BodyLimit(app, max_bytes=10 * 2**20)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_UPLOAD_BYTES = 10 * 2**20  # the default limit on an uploaded image file
DRAIN_BYTES = 16 * 2**20  # read past the limit at most this much before answering


def describe_bytes(n: int) -> str:
    """``n`` bytes for people: "10 MiB", or "100,000 bytes" below a MiB."""
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n:,} bytes"


class BodyLimit:
    """Answer 413 to any HTTP request whose body grows past ``max_bytes``.

    Args:
        app: the ASGI app to protect.
        max_bytes: the largest body passed on (multipart framing included).
        shown_limit: the limit the 413 message names (default ``max_bytes``), e.g. the
            file size limit when ``max_bytes`` adds room for the multipart framing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, shown_limit: int | None = None) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.shown_limit = int(shown_limit if shown_limit is not None else max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            declared = int(headers.get(b"content-length", b""))
        except ValueError:
            declared = None  # absent (chunked) or garbage: count instead
        if declared is not None and declared > self.max_bytes:
            waiting = headers.get(b"expect", b"").lower() == b"100-continue"
            if not waiting and declared <= self.max_bytes + DRAIN_BYTES:
                await self._drain(receive, 0)
            await self._too_large(send, declared)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, total - self.max_bytes)
                await self._too_large(send, None)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _drain(self, receive: Receive, over: int) -> None:
        """Read and drop the rest of the body, up to DRAIN_BYTES past the limit."""
        while over <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            over += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _too_large(self, send: Send, declared: int | None) -> None:
        size = f" ({describe_bytes(declared)})" if declared is not None else ""
        detail = f"upload too large{size}: the limit is {describe_bytes(self.shown_limit)}"
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the whole buffered body once, then waits on the real one
    (which reports the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
