"""The engine in a process of its own, so that the HTTP layer and the engine's host work never wait
for each other's turn at one interpreter lock.

On a GPU the engine's host work (scheduling, preparing inputs, detokenizing) must keep up with the
device, and the event loop spends tens of microseconds of Python per streamed chunk. Sharing one
lock, each delays the other: a thread that wants the lock back may wait out the whole switch
interval (5 ms) of the other. vLLM moved its engine out of the API server's process for this.

Parent (this module's `EngineProcess`, on the event loop): tokenizer, validation, per-request
queues. A sender thread writes requests and aborts to a pipe. The event loop itself reads the other
pipe, one message per engine turn (that turn's outputs and the engine's stats), whenever it is
readable, and takes all that has come: a reader thread would need the lock back from a busy event
loop for every message, and a convoy of such waits can hold back the engine.

Child (`engine_child.serve_engine`): the same `run_engine_loop` as the engine thread, its inbox
read straight from the pipe between steps. It exits when told to stop or when the parent's end of
the pipe closes, so it never outlives the server. Its log records go to the parent's handlers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from model_runtime.api import EngineStats, ModelInfo, RequestOutput
from model_runtime.async_engine import AsyncEngine
from model_runtime.config import EngineConfig
from model_runtime.engine import resolve_device
from model_runtime.engine_child import Embedded, LoadFailed, Ready, Turn, receive, serve_engine
from model_runtime.engine_front import EngineFront
from model_runtime.engine_loop import Embed, Message, Stop
from model_runtime.request_checks import check_embed_inputs
from model_runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# How long shutdown() waits for the engine process before killing it, then for our own threads.
SHUTDOWN_JOIN_S = 10.0
THREAD_JOIN_S = 2.0


class EngineProcess(EngineFront):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        self._context = multiprocessing.get_context("spawn")  # a forked CUDA runtime is unusable
        self._process: multiprocessing.process.BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model_info: ModelInfo | None = None
        self._tokenizer: Tokenizer | None = None
        self._stats: EngineStats | None = None
        # monotonic time the running step started, 0.0 between steps; written by the child
        self._step_started = self._context.Value("d", 0.0, lock=False)
        self._outbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._embeds: dict[int, asyncio.Future[list[list[float]]]] = {}
        self._tickets = itertools.count()
        self._threads: list[threading.Thread] = []
        self._from_child: Connection | None = None  # read by the event loop
        self._logs: Any = None  # the child's log records, a multiprocessing queue
        self._failure: str | None = None
        self._stopping = False

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        from_parent, to_child = self._context.Pipe(duplex=False)
        from_child, to_parent = self._context.Pipe(duplex=False)
        self._logs = self._context.Queue()
        self._process = self._context.Process(
            target=serve_engine,
            args=(
                self.config,
                from_parent,
                to_parent,
                self._step_started,
                self._logs,
                logging.getLogger().getEffectiveLevel(),
            ),
            name="atenea-engine",
            daemon=True,  # ended with the server whichever way it exits
        )
        self._process.start()
        # Our copies of the child's ends: closed, so that its death reads as end-of-file here.
        from_parent.close()
        to_parent.close()
        self._start_thread(self._forward_logs, "atenea-engine-logs")
        tokenizer = asyncio.create_task(asyncio.to_thread(Tokenizer.from_folder, self.config.model_path))
        first = await asyncio.to_thread(receive, from_child)
        if not isinstance(first, Ready):
            tokenizer.cancel()
            from_child.close()
            to_child.close()
            await self._reap()
            reason = first.message if isinstance(first, LoadFailed) else "it exited while loading"
            raise RuntimeError(f"the engine process could not load the model: {reason}")
        self._model_info, self._stats = first.model_info, first.stats
        self._tokenizer = await tokenizer
        self._from_child = from_child
        self._loop.add_reader(from_child.fileno(), self._read_pipe)
        self._start_thread(lambda: self._send_forever(to_child), "atenea-engine-sender")

    async def shutdown(self) -> None:
        if self._process is None:
            return
        self._stopping = True
        self._outbox.put(Stop())
        await self._reap()

    async def _reap(self) -> None:
        """Waits for the child (killing it when it does not stop) and for our threads."""
        process = self._process
        assert process is not None
        self._stopping = True
        self._outbox.put(None)
        await asyncio.to_thread(process.join, SHUTDOWN_JOIN_S)
        if process.is_alive():
            log.error("the engine process did not stop within %.0f s; killing it", SHUTDOWN_JOIN_S)
            process.kill()
            await asyncio.to_thread(process.join)
        if self._from_child is not None:
            self._read_pipe()  # its last turn (the requests the stop ended), then end of file
        self._logs.put(None)
        for thread in self._threads:
            # Bounded: a child killed in the middle of writing a log record leaves the log
            # thread reading a record that never ends. Both threads are daemons.
            await asyncio.to_thread(thread.join, THREAD_JOIN_S)
        self._threads = []
        self._process = None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive() and self._failure is None

    # -- EngineClient ---------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        if self._model_info is None:
            raise RuntimeError("the engine is not started")
        return self._model_info

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the engine is not started")
        return self._tokenizer

    def stats(self) -> EngineStats:
        if self._stats is None:
            raise RuntimeError("the engine is not started")
        started = self._step_started.value
        running_s = 0.0 if started == 0.0 else max(time.monotonic() - started, 0.0)
        return replace(self._stats, step_running_s=running_s)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        if not self.is_alive():
            raise RuntimeError("the engine is not running")
        check_embed_inputs(inputs, self.model_info)  # the client's errors are raised here
        assert self._loop is not None
        ticket = next(self._tickets)
        future: asyncio.Future[list[list[float]]] = self._loop.create_future()
        self._embeds[ticket] = future
        self._send(Embed([list(ids) for ids in inputs], ticket))
        try:
            return await future
        finally:
            self._embeds.pop(ticket, None)

    def _send(self, message: Message) -> None:
        self._outbox.put(message)

    # -- threads --------------------------------------------------------------------------------

    def _start_thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _send_forever(self, pipe: Connection) -> None:
        # A thread, not the event loop: a large prompt can fill the pipe while the child is busy.
        while (message := self._outbox.get()) is not None:
            try:
                pipe.send(message)
            except (OSError, ValueError):
                break  # the child is gone; the reader reports it
        pipe.close()

    def _forward_logs(self) -> None:
        while (record := self._logs.get()) is not None:
            logging.getLogger(record.name).handle(record)

    # -- on the event loop ----------------------------------------------------------------------

    def _read_pipe(self) -> None:
        """Everything the child has sent so far. A message is written whole, so `recv` after a
        successful poll waits at most for the rest of one write."""
        pipe = self._from_child
        assert pipe is not None
        while pipe.poll(0):
            message = receive(pipe)
            if message is None:
                self._pipe_closed(pipe)
                return
            if isinstance(message, Turn):
                self._stats = message.stats
                if message.outputs:
                    self._dispatch([RequestOutput(*values) for values in message.outputs])
            elif isinstance(message, Embedded):
                self._embedded(message)

    def _pipe_closed(self, pipe: Connection) -> None:
        assert self._loop is not None
        self._loop.remove_reader(pipe.fileno())
        pipe.close()
        self._from_child = None
        if self._stopping:
            return
        process = self._process
        code = process.exitcode if process is not None else None
        self._failure = f"the engine process exited unexpectedly (exit code {code})"
        log.error("%s", self._failure)
        self._fail_everything(self._failure)

    def _embedded(self, message: Embedded) -> None:
        future = self._embeds.get(message.ticket)
        if future is None or future.done():
            return
        if message.error is not None:
            future.set_exception(RuntimeError(message.error))
        else:
            future.set_result(message.vectors or [])

    def _fail_everything(self, message: str) -> None:
        self._fail_streams(message)
        for future in self._embeds.values():
            if not future.done():
                future.set_exception(RuntimeError(message))


def engine_for(config: EngineConfig, own_process: bool | None = None) -> EngineFront:
    """The engine on a thread of this process or in a process of its own. None: its own process
    where it runs on CUDA; on a CPU the two would share the same cores anyway, and a thread starts
    seconds sooner."""
    if own_process is None:
        own_process = resolve_device(config).type == "cuda"
    return EngineProcess(config) if own_process else AsyncEngine(config)
