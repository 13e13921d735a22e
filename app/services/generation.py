"""Running generations for a request: abort-on-exit wrapping, fan-in of several prompts, collection,
and the race against a client that leaves before a non-streamed answer is ready.

Every generation is consumed through `guarded`, inside `contextlib.aclosing`, so whichever way a
request ends (finish, error, cancellation, disconnect) the engine hears about it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal, TypeVar

from starlette.requests import Request

from app.errors import APIError, engine_error, server_error
from model_runtime import EngineClient, EngineError, FinishReason, RequestOutput, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One prompt to run: one choice of the response."""

    request_id: str
    prompt_ids: Sequence[int]
    params: SamplingParams


@dataclass(frozen=True)
class Completion:
    """A finished choice."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


def finish_reason_of(output: RequestOutput) -> Literal["stop", "length"]:
    """The client-facing finish reason of a final output; failures become errors."""
    if output.finish_reason is FinishReason.STOP:
        return "stop"
    if output.finish_reason is FinishReason.LENGTH:
        return "length"
    if output.finish_reason is FinishReason.ABORT:
        # Only the server aborts a request whose client is still there (shutdown, overload).
        raise server_error("The request was aborted by the server.", "request_aborted", 503)
    raise server_error(output.error or "The engine failed while generating this response.", "engine_error")


def check_output(output: RequestOutput) -> None:
    """Raise for an output that reports a failure, so it never reaches a client as text."""
    if output.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
        finish_reason_of(output)


async def guarded(engine: EngineClient, job: Job) -> AsyncIterator[RequestOutput]:
    """`engine.generate`, plus an abort whenever we stop before the final output."""
    outputs = engine.generate(job.request_id, job.prompt_ids, job.params)
    finished = False
    try:
        async for output in outputs:
            finished = output.finished
            yield output
            if finished:
                break
    finally:
        if not finished:
            # Synchronous, so it happens even when the awaits below are cancelled.
            engine.abort(job.request_id)
        aclose = getattr(outputs, "aclose", None)
        if aclose is not None:
            await aclose()


async def merged(engine: EngineClient, jobs: Sequence[Job]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several jobs as they come, tagged with the job's index.

    Use inside `aclosing`: leaving early cancels the pumps, which aborts their requests.
    """
    if len(jobs) == 1:
        async with aclosing(guarded(engine, jobs[0])) as outputs:
            async for output in outputs:
                yield 0, output
        return

    queue: asyncio.Queue[tuple[int, RequestOutput | None] | BaseException] = asyncio.Queue()

    async def pump(index: int, job: Job) -> None:
        try:
            async with aclosing(guarded(engine, job)) as outputs:
                async for output in outputs:
                    queue.put_nowait((index, output))
            queue.put_nowait((index, None))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            index, output = item
            if output is None:
                running -= 1
            else:
                yield index, output
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(engine: EngineClient, jobs: Sequence[Job]) -> list[Completion]:
    """Run the jobs to the end; one Completion per job, in order."""
    texts: list[list[str]] = [[] for _ in jobs]
    finals: list[RequestOutput | None] = [None] * len(jobs)
    async with aclosing(merged(engine, jobs)) as outputs:
        async for index, output in outputs:
            check_output(output)
            texts[index].append(output.text)
            if output.finished:
                finals[index] = output
    completions = []
    for text, final in zip(texts, finals, strict=True):
        if final is None:
            raise server_error("The engine ended a generation without a final output.")
        completions.append(
            Completion("".join(text), finish_reason_of(final), final.prompt_tokens, final.completion_tokens)
        )
    return completions


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away. The body has been read, so the next ASGI message the
    server gives us is the disconnect (servers block `receive` until then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # a server that repeats empty body messages must not make us spin


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`await work`, unless the client leaves first: then cancel it (which aborts its generations)
    and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        logger.info("client disconnected before the response was ready; request aborted")
        return None
    finally:
        watcher.cancel()
        task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


def as_api_error(exc: Exception) -> APIError:
    """What to tell a client about a failure that happened after its stream started."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineError):
        return engine_error(exc)
    logger.exception("generation failed", exc_info=exc)
    return server_error("The server had an error while processing your request.")
