"""Watches the engine thread from the event loop: a thread that died, or one stuck in a step for
longer than `stall_timeout`, fails the server (see Lifecycle.fail) instead of leaving a process that
accepts requests it will never answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app.lifecycle import Lifecycle, Phase
from model_runtime import EngineClient

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5


class Watchdog:
    def __init__(
        self,
        engine: Callable[[], EngineClient | None],
        lifecycle: Lifecycle,
        stall_timeout: float,
        interval: float = CHECK_INTERVAL_S,
    ) -> None:
        self._engine = engine
        self._lifecycle = lifecycle
        self._stall_timeout = stall_timeout
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="atenea-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def problem(self) -> str | None:
        """What is wrong with the engine now, if anything."""
        engine = self._engine()
        if engine is None:
            return None  # not started yet, or already shut down on purpose
        if not engine.is_alive():
            return "the engine thread has stopped"
        stuck = engine.stats().step_running_s
        if stuck > self._stall_timeout:
            return f"the engine has been stuck in one step for {stuck:.0f} s"
        return None

    async def _watch(self) -> None:
        while self._lifecycle.phase is not Phase.FAILED:
            await asyncio.sleep(self._interval)
            if self._lifecycle.phase is Phase.STARTING:
                continue
            problem = self.problem()
            if problem is not None:
                await self._lifecycle.fail(problem)
                return
