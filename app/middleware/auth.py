"""API keys. With keys configured, every request must carry `Authorization: Bearer KEY` except the
few public paths (liveness and readiness probes). Protection is by path, outside routing, so a route
added later is protected without a line of its own: deny by default."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import invalid_api_key

# Exact paths that answer without a key. Probes: load balancers and kubelets hold no key. The
# playground's static files: they hold no data (the page asks the user for a key to call the API).
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/",
        "/playground/index.html",
        "/playground/playground.js",
        "/playground/playground.css",
    }
)


def load_api_keys(keys: Iterable[str], key_file: str | None) -> list[bytes]:
    """The configured keys: given ones plus one per line of `key_file` (blank lines and # comments
    skipped). Raises OSError when the file cannot be read and ValueError when it holds no key."""
    found = [key for key in keys if key]
    if key_file is not None:
        lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise ValueError(f"the API key file {key_file} holds no key")
        found.extend(from_file)
    return [key.encode("utf-8") for key in dict.fromkeys(found)]


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[bytes], public_paths: frozenset[str] = PUBLIC_PATHS) -> None:
        if not keys:
            raise ValueError("ApiKeyMiddleware needs at least one key")
        self.app = app
        self.keys = keys
        self.public_paths = public_paths

    def authorized(self, token: bytes | None) -> bool:
        if token is None:
            return False
        # compare_digest takes time independent of where the bytes differ; every key is compared,
        # so the time does not tell which key came close either.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        if not self.authorized(_bearer_token(scope)):
            await invalid_api_key().to_response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
