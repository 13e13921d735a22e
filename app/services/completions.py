"""Legacy completions: each prompt (string or token ids) is one choice; the answers are generated
concurrently and streamed interleaved, as OpenAI does."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from app.errors import server_error
from app.responses import DONE, client_gone, error_event, json_response, sse_response
from app.schemas.common import Usage
from app.schemas.completions import CompletionChoice, CompletionRequest, CompletionResponse
from app.schemas.logprobs import CompletionLogprobs, completion_logprobs
from app.services.generation import (
    Completion,
    Job,
    as_api_error,
    check_output,
    collect,
    finish_reason_of,
    merged,
    until_disconnected,
    usage_of,
)
from app.services.models import served_model
from model_runtime import ContextLengthExceeded, EngineClient, SamplingParams


@dataclass(frozen=True)
class CompletionStream:
    """What every chunk of one response shares."""

    id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        body = CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return body.model_dump_json(exclude=None if self.include_usage else {"usage"})


def _jobs(
    body: CompletionRequest, engine: EngineClient, response_id: str, params: SamplingParams
) -> list[Job]:
    jobs = []
    for index, prompt in enumerate(body.prompts()):
        prompt_ids = engine.encode(prompt) if isinstance(prompt, str) else prompt
        try:
            engine.validate(prompt_ids, params)
        except ContextLengthExceeded as exc:
            # The engine's default names the chat field; here the prompt is what is too long.
            if exc.param == "messages":
                exc.param = "prompt"
            raise
        jobs.append(Job(f"{response_id}-{index}", prompt_ids, params))
    return jobs


def _echoes(body: CompletionRequest, engine: EngineClient, jobs: list[Job]) -> list[str]:
    """Each prompt's text, put before its choices' text when `echo` is set."""
    if not body.echo:
        return ["" for _ in jobs]
    return [p if isinstance(p, str) else engine.decode(p) for p in body.prompts()]


async def create_completion(body: CompletionRequest, engine: EngineClient, request: Request) -> Response:
    model = served_model(engine, body.model).id
    params = body.to_sampling_params()
    response_id = f"cmpl-{uuid.uuid4().hex}"
    # Every prompt is validated before any generation starts: one bad prompt fails the request.
    jobs = _jobs(body, engine, response_id, params)
    echoes = _echoes(body, engine, jobs)
    created = int(time.time())
    if body.stream:
        stream = CompletionStream(response_id, created, model, body.include_usage)
        return sse_response(_events(engine, jobs, stream, echoes))

    completions = await until_disconnected(request, collect(engine, jobs))
    if completions is None:
        return client_gone()
    prompt_tokens, completion_tokens = usage_of(completions)
    response = CompletionResponse(
        id=response_id,
        created=created,
        model=model,
        choices=[
            CompletionChoice(
                text=echoes[c.job] + c.text,
                index=c.job * params.n + c.index,
                logprobs=_logprobs(c, echoes[c.job]),
                finish_reason=c.finish_reason,
            )
            for c in completions
        ],
        usage=Usage.of(prompt_tokens, completion_tokens),
    )
    return json_response(response)


def _logprobs(c: Completion, echo: str) -> CompletionLogprobs | None:
    if c.logprobs is None:
        return None
    if echo and c.prompt_logprobs is not None:
        return completion_logprobs([*c.prompt_logprobs, *c.logprobs])
    return completion_logprobs(c.logprobs, len(echo))


async def _events(
    engine: EngineClient, jobs: list[Job], stream: CompletionStream, echoes: list[str]
) -> AsyncGenerator[str, None]:
    """Text chunks per choice, one finish chunk per choice, [usage chunk], [DONE]; or error, [DONE]."""
    n = jobs[0].params.n
    prompt_tokens: dict[int, int] = {}
    completion_tokens = finished = 0
    offsets: dict[int, int] = {}  # characters sent so far per choice, for logprobs' text_offset
    try:
        async with aclosing(merged(engine, jobs)) as outputs:
            async for job, output in outputs:
                check_output(output)
                index = job * n + output.index
                if index not in offsets:
                    offsets[index] = 0
                    if echoes[job]:
                        prompt_lp = None
                        if output.prompt_logprobs is not None:
                            prompt_lp = completion_logprobs(output.prompt_logprobs)
                        echo = CompletionChoice(
                            text=echoes[job], index=index, logprobs=prompt_lp, finish_reason=None
                        )
                        yield stream.chunk([echo])
                        offsets[index] = len(echoes[job])
                if output.text or output.logprobs:
                    logprobs = None
                    if output.logprobs is not None:
                        logprobs = completion_logprobs(output.logprobs, offsets[index])
                    offsets[index] += len(output.text)
                    choice = CompletionChoice(
                        text=output.text, index=index, logprobs=logprobs, finish_reason=None
                    )
                    yield stream.chunk([choice])
                if output.finished:
                    reason = finish_reason_of(output)
                    yield stream.chunk([CompletionChoice(text="", index=index, finish_reason=reason)])
                    prompt_tokens[job] = output.prompt_tokens
                    completion_tokens += output.completion_tokens
                    finished += 1
        if finished < len(jobs) * n:
            raise server_error("The engine ended a generation without a final output.")
        if stream.include_usage:
            yield stream.chunk([], Usage.of(sum(prompt_tokens.values()), completion_tokens))
    except Exception as exc:
        yield error_event(as_api_error(exc))
    yield DONE
