"""A real `atenea serve` process on the real default model, shared by the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

if TYPE_CHECKING:  # Playwright is imported only by the tests that drive a browser
    from playwright.sync_api import Browser, Page

MODEL = "smollm2-135m-instruct"
STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log = log

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=5).json()

    def wait_idle(self, timeout: float = 10.0) -> dict:
        """Waits until no sequence runs or waits and every KV block is free; returns /health."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            idle = h["running"] == 0 and h["waiting"] == 0 and h["kv_blocks_free"] == h["kv_blocks_total"]
            if idle or time.monotonic() > deadline:
                return h
            time.sleep(0.05)


@pytest.fixture(scope="session")
def server(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "ATENEA_MAX_MODEL_LEN": "2048"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    srv = Server(port, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{srv.base_url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="anything", max_retries=0)


@pytest.fixture
def aclient(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="anything", max_retries=0, timeout=120)


API_KEY = "sk-atenea-e2e"


@pytest.fixture(scope="session")
def keyed_server(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second real server, started with `--api-key API_KEY`, for clients that send a key."""
    port = free_port()
    log = tmp_path_factory.mktemp("keyed-server") / "server.log"
    env = {**os.environ, "ATENEA_MAX_MODEL_LEN": "2048"}
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--api-key", API_KEY]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(port, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{srv.base_url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


# The playground tests' browser: Debian's Chromium, one per test module, a fresh page per test.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from tests.e2e.chromium import chromium

    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    from tests.e2e.chromium import new_page

    with new_page(browser) as page:
        yield page
