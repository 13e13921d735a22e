"""GET /: the web playground, three static files with no build step (app/static/playground).

The page itself holds no data and needs no key: it calls the public API from the browser, sending
the key the user types in. Only the files listed here are served, so no request path reaches the disk.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse

from app.errors import APIError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"
FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}

router = APIRouter(tags=["playground"], include_in_schema=False)


def _file(name: str) -> FileResponse:
    # no-cache: a new server version's page is picked up on reload, yet ETags still spare the bytes.
    return FileResponse(STATIC_DIR / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/")
async def playground() -> FileResponse:
    return _file("index.html")


@router.get("/playground/{name}")
async def playground_file(name: str) -> FileResponse:
    if name not in FILES:
        raise APIError(404, f"No playground file named {name[:64]!r}.", code="not_found")
    return _file(name)
