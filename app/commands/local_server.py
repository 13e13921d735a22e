"""An in-process server for `atenea chat --local`: the real app on a loopback port in a background
thread, so the chat talks to it through the same public API as to a remote server."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

from app.settings import Settings

STARTUP_TIMEOUT_S = 600.0  # the first start may fetch and convert the default model


class LocalServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = ""
        self._server: object | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalServer:
        # Imported here: only --local pays for the web stack and the engine.
        import uvicorn

        from app.main import create_app, engine_config_from_settings

        engine_config = engine_config_from_settings(self.settings)  # fetches with progress bars
        port = _free_port()
        config = uvicorn.Config(
            create_app(self.settings, engine_config=engine_config),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="atenea-local-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start (see the log above)")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import uvicorn

        if isinstance(self._server, uvicorn.Server):
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
