"""The engine thread and its asyncio face.

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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from model_runtime.api import (
    ChatMessage,
    EngineStats,
    FinishReason,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    ToolSpec,
)
from model_runtime.config import EngineConfig
from model_runtime.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Embed:
    inputs: list[list[int]]
    future: asyncio.Future[list[list[float]]]


class _Stop:
    pass


# How long shutdown() waits for the engine thread: a thread stuck in a step must not hang the exit.
SHUTDOWN_JOIN_S = 10.0


class AsyncEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._engine: Engine | None = None
        self._inbox: queue.SimpleQueue[_Add | _Abort | _Embed | _Stop] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[RequestOutput]] = {}
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
        self._inbox.put(_Stop())
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

    def encode(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.engine.tokenizer.decode(token_ids)

    def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] | None = None
    ) -> list[int]:
        return self.engine.render_chat(messages, tools)

    def validate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        self.engine.validate(prompt_token_ids, params)

    def stats(self) -> EngineStats:
        started = self._step_started
        running_s = 0.0 if started is None else time.monotonic() - started
        return replace(self.engine.stats(), step_running_s=running_s)

    async def generate(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        if not self.is_alive():
            raise RuntimeError("the engine is not running")
        self.validate(prompt_token_ids, params)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in flight")
        stream: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._streams[request_id] = stream
        self._inbox.put(_Add(request_id, list(prompt_token_ids), params))
        finished = False
        unfinished = params.n  # one final output per sample; a failure ends them all
        held: RequestOutput | None = None  # taken from the queue while merging, not yet sent
        try:
            while True:
                out, held = await _next_merged(stream, held)
                if out.finished:
                    unfinished -= 1
                finished = unfinished == 0 or out.finish_reason is FinishReason.ERROR
                yield out
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Embeddings computed on the engine thread between steps."""
        if not self.is_alive():
            raise RuntimeError("the engine is not running")
        assert self._loop is not None
        future: asyncio.Future[list[list[float]]] = self._loop.create_future()
        self._inbox.put(_Embed([list(ids) for ids in inputs], future))
        return await future

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
            self._loop_forever(self._engine)
        except BaseException as exc:
            self._failure = exc
            log.exception("the engine thread died")
            self._deliver(self._engine.fail_all(f"the engine failed: {exc}"))

    def _loop_forever(self, engine: Engine) -> None:
        while True:
            # Block while idle; otherwise take whatever arrived during the last step.
            messages = [self._inbox.get()] if not engine.has_work() else []
            while True:
                try:
                    messages.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            outputs: list[RequestOutput] = []
            for message in messages:
                if isinstance(message, _Stop):
                    self._deliver(engine.fail_all("the server is shutting down"))
                    return
                outputs.extend(self._handle(engine, message))
            if engine.has_work():
                self._step_started = time.monotonic()
                try:
                    outputs.extend(engine.step())
                except Exception as exc:
                    # A failed step fails the requests in flight, not the engine.
                    log.exception("engine step failed")
                    outputs.extend(engine.fail_all(f"the engine failed to run a step: {exc}"))
                finally:
                    self._step_started = None
            if outputs:
                self._deliver(outputs)

    def _handle(self, engine: Engine, message: _Add | _Abort | _Embed) -> list[RequestOutput]:
        if isinstance(message, _Abort):
            engine.abort(message.request_id)
            return []  # the caller has gone; nobody reads an abort output
        if isinstance(message, _Embed):
            loop = self._loop
            assert loop is not None
            try:
                vectors = engine.embed(message.inputs)
            except Exception as exc:  # the caller's error (EngineError) or a failure, raised there
                loop.call_soon_threadsafe(_set_exception, message.future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, message.future, vectors)
            return []
        try:
            engine.add_request(message.request_id, message.prompt_token_ids, message.params)
        except Exception as exc:
            return [
                RequestOutput(
                    message.request_id,
                    "",
                    [],
                    True,
                    FinishReason.ERROR,
                    len(message.prompt_token_ids),
                    0,
                    str(exc),
                )
            ]
        return []

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        # On the event loop: route each output to its request's queue (gone if it disconnected).
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)


async def _next_merged(
    stream: asyncio.Queue[RequestOutput], held: RequestOutput | None
) -> tuple[RequestOutput, RequestOutput | None]:
    """The next output, merged with those of the same sample already queued behind it.

    When the engine gets ahead of a consumer (a busy event loop, a slow client), one output then
    carries several tokens instead of each paying for its own trip through the HTTP layer (vLLM
    merges the same way). Returns it and the output of another sample that stopped the merge.
    """
    out = held if held is not None else await stream.get()
    while not out.finished and not stream.empty():
        following = stream.get_nowait()
        if following.index != out.index:
            return out, following
        out = merged(out, following)
    return out, None


def merged(first: RequestOutput, then: RequestOutput) -> RequestOutput:
    """Two successive outputs of one sample as one."""
    logprobs = None
    if first.logprobs is not None or then.logprobs is not None:
        logprobs = (first.logprobs or []) + (then.logprobs or [])
    return replace(
        then,
        text=first.text + then.text,
        token_ids=first.token_ids + then.token_ids,
        logprobs=logprobs,
        prompt_logprobs=first.prompt_logprobs,
    )


def _set_result(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
