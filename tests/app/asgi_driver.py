"""Drive the ASGI app by hand, to play a client that goes away mid-request (httpx's ASGITransport
only hangs up after the whole response, so it cannot)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Exchange:
    status: int | None = None
    body_chunks: list[bytes] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def body(self) -> bytes:
        return b"".join(self.body_chunks)


async def post(
    app: Any,
    path: str,
    body: dict[str, Any],
    *,
    hang_up_when: Callable[[Exchange], bool] = lambda exchange: False,
    hang_up_after: float | None = None,
    send_fails_when: Callable[[Exchange], bool] = lambda exchange: False,
) -> Exchange:
    """POST `body`; the client disconnects (http.disconnect) once `hang_up_when(exchange)` holds or
    `hang_up_after` seconds have passed, or the server's send() fails as on a broken socket once
    `send_fails_when(exchange)` holds."""
    exchange = Exchange()
    if hang_up_after is not None:
        asyncio.get_running_loop().call_later(hang_up_after, exchange.disconnected.set)
    payload = json.dumps(body).encode()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await exchange.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if send_fails_when(exchange):
            raise OSError("connection reset by peer")
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        elif message["type"] == "http.response.body" and message.get("body"):
            exchange.body_chunks.append(message["body"])
        if hang_up_when(exchange):
            exchange.disconnected.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return exchange
