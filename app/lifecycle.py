"""The server's life: starting, serving, draining, failed; the requests in flight; and how it asks the
process to exit.

SIGTERM starts a drain: new requests get 503, in-flight ones get `shutdown_timeout` seconds to finish,
the rest are ended with a clean error, then the server exits 0. A dead or stalled engine fails the
server: readiness turns 503, in-flight requests get an error, and the process exits non-zero so its
supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from app.request_context import EndReason, RequestContext

logger = logging.getLogger(__name__)

# Once in-flight requests have been ended, how long their error responses get to reach clients.
END_GRACE_S = 5.0


class Phase(enum.Enum):
    STARTING = "starting"  # the model is loading
    SERVING = "serving"
    DRAINING = "draining"  # SIGTERM: finishing what was admitted, admitting nothing new
    FAILED = "failed"  # the engine died or stalled; the process is on its way out


class Lifecycle:
    def __init__(self, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.phase = Phase.STARTING
        self.in_flight: set[RequestContext] = set()
        # Set by whoever runs the server (`atenea serve`): asks it to stop with this exit code.
        self.request_exit: Callable[[int], None] = self._no_exit
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_task: asyncio.Task[None] | None = None

    @staticmethod
    def _no_exit(code: int) -> None:
        logger.warning("no server to stop (exit code %d would have been used)", code)

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.SERVING

    def refusal(self) -> str:
        """Why requests are refused now (only meaningful while not accepting)."""
        return {
            Phase.STARTING: "The server is starting; try again shortly.",
            Phase.DRAINING: "The server is shutting down; try another replica.",
            Phase.FAILED: "The engine has failed and the server is restarting; try again shortly.",
        }.get(self.phase, "The server is not ready.")

    def mark_serving(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.SERVING

    # -- requests in flight -----------------------------------------------------------------------

    def enter(self, context: RequestContext) -> None:
        self.in_flight.add(context)
        self._idle.clear()

    def leave(self, context: RequestContext) -> None:
        self.in_flight.discard(context)
        if not self.in_flight:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def end_all(self, reason: EndReason) -> None:
        for context in list(self.in_flight):
            context.end(reason)

    # -- drain and failure ------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """SIGTERM's handler (on the event loop). A second call while draining does nothing."""
        if self.phase in (Phase.DRAINING, Phase.FAILED) or self._drain_task is not None:
            return
        self.phase = Phase.DRAINING
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        logger.info(
            "draining: %d request(s) in flight get up to %.0f s to finish",
            len(self.in_flight),
            self.shutdown_timeout,
        )
        if not await self.wait_idle(self.shutdown_timeout):
            logger.warning("drain deadline passed: ending %d request(s) with an error", len(self.in_flight))
            self.end_all(EndReason.SHUTDOWN)
            await self.wait_idle(END_GRACE_S)
        logger.info("drained; stopping")
        self.request_exit(0)

    async def fail(self, reason: str) -> None:
        """The engine is gone: stop admitting, fail what is in flight, exit non-zero."""
        if self.phase is Phase.FAILED:
            return
        self.phase = Phase.FAILED
        logger.error("%s: failing %d request(s) in flight and exiting", reason, len(self.in_flight))
        self.end_all(EndReason.ENGINE_FAILED)
        await self.wait_idle(END_GRACE_S)
        self.request_exit(1)
