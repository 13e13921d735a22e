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
from model_runtime import EngineClient, EngineError, FinishReason, RequestOutput, SamplingParams, TokenLogprob

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
    """A finished choice: sample `index` of job `job`."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    job: int = 0
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


def usage_of(completions: Sequence[Completion]) -> tuple[int, int]:
    """(prompt, completion) tokens of a response: each prompt counts once, however many samples."""
    prompts = {c.job: c.prompt_tokens for c in completions}
    return sum(prompts.values()), sum(c.completion_tokens for c in completions)


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
    unfinished = job.params.n  # each of the n samples ends with its own final output
    try:
        async for output in outputs:
            unfinished -= output.finished
            finished = unfinished == 0
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
    """Run the jobs to the end; one Completion per sample, ordered by job then sample index."""
    texts: dict[tuple[int, int], list[str]] = {}
    logprobs: dict[tuple[int, int], list[TokenLogprob]] = {}
    prompt_logprobs: dict[int, list[TokenLogprob]] = {}
    finals: dict[tuple[int, int], RequestOutput] = {}
    async with aclosing(merged(engine, jobs)) as outputs:
        async for job, output in outputs:
            check_output(output)
            key = (job, output.index)
            texts.setdefault(key, []).append(output.text)
            if output.logprobs is not None:
                logprobs.setdefault(key, []).extend(output.logprobs)
            if output.prompt_logprobs is not None:
                prompt_logprobs[job] = output.prompt_logprobs
            if output.finished:
                finals[key] = output
    completions = []
    for job_index, job in enumerate(jobs):
        for index in range(job.params.n):
            key = (job_index, index)
            final = finals.get(key)
            if final is None:
                raise server_error("The engine ended a generation without a final output.")
            completions.append(
                Completion(
                    "".join(texts.get(key, [])),
                    finish_reason_of(final),
                    final.prompt_tokens,
                    final.completion_tokens,
                    job_index,
                    index,
                    logprobs.get(key, []) if job.params.logprobs is not None else None,
                    prompt_logprobs.get(job_index),
                )
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
