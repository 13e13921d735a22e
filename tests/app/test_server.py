"""The uvicorn server `atenea serve` runs."""

from __future__ import annotations

import asyncio
import gc

import uvicorn

from app.main import create_app
from app.server import DrainingServer
from app.settings import Settings
from tests.app.fake_engine import FakeEngine


async def test_what_is_alive_after_start_up_is_kept_out_of_garbage_collection() -> None:
    # A full collection would otherwise walk the models and imports, pausing every stream.
    app = create_app(Settings(), engine=FakeEngine())
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    server = DrainingServer(config, app.state.lifecycle)
    gc.unfreeze()
    before = gc.get_freeze_count()
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > before + 10_000
        assert gc.get_count()[2] == 0  # nothing is left to walk in the oldest generation
    finally:
        server.should_exit = True
        await serving
        gc.unfreeze()
