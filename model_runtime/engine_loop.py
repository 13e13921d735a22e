"""The loop that drives an `Engine`: take the messages that arrived, step while there is work, hand
the outputs on. One loop for both homes of the engine: a thread of the server (`AsyncEngine`) and a
process of its own (`EngineProcess`); each gives it an inbox and a sink.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from typing import Any, Protocol

from model_runtime.api import FinishReason, RequestOutput, SamplingParams
from model_runtime.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class Abort:
    request_id: str


@dataclass(frozen=True)
class Embed:
    inputs: list[list[int]]
    ticket: Any  # how the sink finds the caller again: a future, or an id across processes


class Stop:
    pass


Message = Add | Abort | Embed | Stop


class Inbox(Protocol):
    def get(self) -> Message:
        """The next message, waiting for one."""
        ...

    def get_nowait(self) -> Message:
        """The next message; raises queue.Empty when none is waiting."""
        ...


class EngineSink(Protocol):
    def deliver(self, outputs: list[RequestOutput]) -> None:
        """After every turn of the loop that did something; `outputs` may be empty."""
        ...

    def embedded(self, ticket: Any, vectors: list[list[float]] | None, error: Exception | None) -> None: ...

    def step_started(self, at: float | None) -> None:
        """`time.monotonic()` when a step starts, None when it ends; read by watchdogs."""
        ...


def run_engine_loop(engine: Engine, inbox: Inbox, sink: EngineSink) -> None:
    """Returns at `Stop`, after failing what is still running. A failed step fails the requests in
    flight, not the engine; anything else escapes to the caller, which owns the engine's death."""
    while True:
        # Block while idle; otherwise take whatever arrived during the last step.
        messages = [inbox.get()] if not engine.has_work() else []
        while True:
            try:
                messages.append(inbox.get_nowait())
            except queue.Empty:
                break
        outputs: list[RequestOutput] = []
        for message in messages:
            if isinstance(message, Stop):
                sink.deliver(engine.fail_all("the server is shutting down"))
                return
            outputs.extend(_handle(engine, message, sink))
        if engine.has_work():
            sink.step_started(time.monotonic())
            try:
                outputs.extend(engine.step())
            except Exception as exc:
                log.exception("engine step failed")
                outputs.extend(engine.fail_all(f"the engine failed to run a step: {exc}"))
            finally:
                sink.step_started(None)
        sink.deliver(outputs)


def _handle(engine: Engine, message: Add | Abort | Embed, sink: EngineSink) -> list[RequestOutput]:
    if isinstance(message, Abort):
        engine.abort(message.request_id)
        return []  # the caller has gone; nobody reads an abort output
    if isinstance(message, Embed):
        try:
            vectors = engine.embed(message.inputs)
        except Exception as exc:  # the caller's error (EngineError) or a failure, raised there
            sink.embedded(message.ticket, None, exc)
        else:
            sink.embedded(message.ticket, vectors, None)
        return []
    try:
        engine.add_request(message.request_id, message.prompt_token_ids, message.params)
    except Exception as exc:
        return [failed_output(message.request_id, len(message.prompt_token_ids), str(exc))]
    return []


def failed_output(request_id: str, prompt_tokens: int, error: str) -> RequestOutput:
    """The one output a request gets when it fails before or outside a step."""
    return RequestOutput(request_id, "", [], True, FinishReason.ERROR, prompt_tokens, 0, error)
