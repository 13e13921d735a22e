"""A dedicated `atenea serve` subprocess with its own flags, for tests that stop, overload or
reconfigure a server (the session's shared server must stay as it is)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.conftest import STARTUP_TIMEOUT_S, free_port


class OwnServer:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, api_key: str | None) -> None:
        self.proc = proc
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = log
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def metrics(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", headers=self.headers, timeout=10).text

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def own_server(tmp_path: Path, *args: str, api_key: str | None = None) -> Iterator[OwnServer]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ATENEA_")},
        "ATENEA_MAX_MODEL_LEN": "2048",
    }
    if api_key:
        env["ATENEA_API_KEY"] = api_key
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = OwnServer(proc, port, log, api_key)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log_text()[-3000:]}")
            try:
                if httpx.get(f"{server.base_url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.log_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
