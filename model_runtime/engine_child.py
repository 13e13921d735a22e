"""The engine process's own side (see `engine_process` for the server's): load the model, report
it, then run the engine loop on a pipe until told to stop or until the server's end of the pipe
closes; and the messages that cross the pipes.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import operator
import queue
import signal
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import Any

from model_runtime.api import EngineStats, ModelInfo, RequestOutput
from model_runtime.config import EngineConfig
from model_runtime.engine import Engine
from model_runtime.engine_loop import Message, Stop, run_engine_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ready:
    model_info: ModelInfo
    stats: EngineStats


@dataclass(frozen=True)
class LoadFailed:
    message: str


# An output crosses the pipe as the tuple of its fields: pickling 128 dataclasses took 277 us and
# unpickling 382 us on the 2-core EPYC; as tuples, 98 us and 110 us with the rebuilding.
output_fields = operator.attrgetter(*(f.name for f in fields(RequestOutput)))


@dataclass(frozen=True)
class Turn:
    """What one turn of the engine loop produced."""

    outputs: list[tuple[Any, ...]]  # RequestOutput fields, in order
    stats: EngineStats


@dataclass(frozen=True)
class Embedded:
    ticket: int
    vectors: list[list[float]] | None
    error: str | None  # inputs are checked before they are sent: an error here is a failure


def receive(pipe: Connection) -> Any:
    """The next message, or None once the other end is closed."""
    try:
        return pipe.recv()
    except (EOFError, OSError):
        return None


class PipeInbox:
    """The engine loop's inbox, read straight from the pipe: with no thread in between, a message
    never waits for that thread's turn at the lock while the engine steps. The parent's end closing
    (it exited, or was killed) reads as a stop."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.closed = False

    def get(self) -> Message:
        message = None if self.closed else receive(self.pipe)
        if message is None:
            self.closed = True  # and nothing is waiting after it, or the loop's drain never ends
            return Stop()
        return message

    def get_nowait(self) -> Message:
        if self.closed or not self.pipe.poll(0):
            raise queue.Empty
        return self.get()


class _PipeSink:
    """Where the child's engine loop puts its results: one pipe message per turn."""

    def __init__(self, engine: Engine, pipe: Connection, step_started: Any) -> None:
        self.engine = engine
        self.pipe = pipe
        self.started = step_started

    def deliver(self, outputs: list[RequestOutput]) -> None:
        self.pipe.send(Turn([output_fields(out) for out in outputs], self.engine.stats()))

    def embedded(self, ticket: Any, vectors: list[list[float]] | None, error: Exception | None) -> None:
        self.pipe.send(Embedded(ticket, vectors, None if error is None else f"embedding failed: {error}"))

    def step_started(self, at: float | None) -> None:
        self.started.value = 0.0 if at is None else at


def serve_engine(
    config: EngineConfig,
    inbox_pipe: Connection,
    outbox_pipe: Connection,
    step_started: Any,
    logs: Any,
    log_level: int,
) -> None:
    """The child's main: load the model, report, then run the engine loop until told to stop."""
    # Ctrl-C reaches the whole process group; the server stops us itself, after draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(log_level)

    try:
        engine = Engine(config)
    except Exception as exc:
        log.exception("the engine could not load the model")
        outbox_pipe.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
        return
    # The model, the tokenizer and the imports live as long as the process: keep them out of full
    # collections, which would pause the engine to walk them (about 0.2 s each).
    gc.collect()
    gc.freeze()
    outbox_pipe.send(Ready(engine.model_info, engine.stats()))
    sink = _PipeSink(engine, outbox_pipe, step_started)
    try:
        run_engine_loop(engine, PipeInbox(inbox_pipe), sink)
    except (BrokenPipeError, EOFError):
        pass  # the parent is gone: nobody is left to tell
    except BaseException as exc:
        log.exception("the engine died")
        sink.deliver(engine.fail_all(f"the engine failed: {exc}"))
        raise SystemExit(1) from exc
