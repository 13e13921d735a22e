"""The engine on a thread of the server's process.

Torch runs on one thread. Requests and aborts reach it through a thread-safe inbox and take effect
at the next step boundary; each request's outputs come back through its own `asyncio.Queue`, fed
once per step with `loop.call_soon_threadsafe`. The event loop never touches a tensor.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from model_runtime.api import EngineStats, ModelInfo, RequestOutput
from model_runtime.config import EngineConfig
from model_runtime.engine import Engine
from model_runtime.engine_front import EngineFront
from model_runtime.engine_loop import Embed, Message, Stop, run_engine_loop
from model_runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# How long shutdown() waits for the engine thread: a thread stuck in a step must not hang the exit.
SHUTDOWN_JOIN_S = 10.0


class AsyncEngine(EngineFront):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        self._engine: Engine | None = None
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._step_started: float | None = None  # monotonic time; read by watchdogs

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the model on the engine thread and returns once it is ready to serve."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="atenea-engine", daemon=True)
        self._thread.start()
        await ready

    async def shutdown(self) -> None:
        if self._thread is None:
            return
        self._inbox.put(Stop())
        await asyncio.to_thread(self._thread.join, SHUTDOWN_JOIN_S)
        if self._thread.is_alive():
            log.error("the engine thread did not stop within %.0f s; leaving it behind", SHUTDOWN_JOIN_S)
        self._thread = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._failure is None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the engine is not started")
        return self._engine

    # -- EngineClient ---------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        return self.engine.model_info

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def stats(self) -> EngineStats:
        started = self._step_started
        running_s = 0.0 if started is None else time.monotonic() - started
        return replace(self.engine.stats(), step_running_s=running_s)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Embeddings computed on the engine thread between steps."""
        if not self.is_alive():
            raise RuntimeError("the engine is not running")
        assert self._loop is not None
        future: asyncio.Future[list[list[float]]] = self._loop.create_future()
        self._inbox.put(Embed([list(ids) for ids in inputs], future))
        return await future

    def _send(self, message: Message) -> None:
        self._inbox.put(message)

    # -- the engine thread ----------------------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            self._engine = Engine(self.config)
        except BaseException as exc:  # report the load failure to start() instead of dying silently
            self._failure = exc
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready)
        try:
            run_engine_loop(self._engine, self._inbox, self)
        except BaseException as exc:
            self._failure = exc
            log.exception("the engine thread died")
            self.deliver(self._engine.fail_all(f"the engine failed: {exc}"))

    # -- EngineSink, called on the engine thread ------------------------------------------------

    def deliver(self, outputs: list[RequestOutput]) -> None:
        if outputs and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def embedded(self, ticket: Any, vectors: list[list[float]] | None, error: Exception | None) -> None:
        loop = self._loop
        assert loop is not None
        if error is not None:
            loop.call_soon_threadsafe(_set_exception, ticket, error)
        else:
            loop.call_soon_threadsafe(_set_result, ticket, vectors)

    def step_started(self, at: float | None) -> None:
        self._step_started = at


def _set_result(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
