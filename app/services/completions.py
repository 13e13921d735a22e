"""Legacy completions: each prompt (string or token ids) is one choice; the answers are generated
concurrently and streamed interleaved, as OpenAI does."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from app.errors import server_error
from app.responses import DONE, client_gone, error_event, json_response, sse_response
from app.schemas.common import Usage
from app.schemas.completions import CompletionChoice, CompletionRequest, CompletionResponse
from app.services.generation import (
    Job,
    as_api_error,
    check_output,
    collect,
    finish_reason_of,
    merged,
    until_disconnected,
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


async def create_completion(body: CompletionRequest, engine: EngineClient, request: Request) -> Response:
    model = served_model(engine, body.model).id
    params = body.to_sampling_params()
    response_id = f"cmpl-{uuid.uuid4().hex}"
    # Every prompt is validated before any generation starts: one bad prompt fails the request.
    jobs = _jobs(body, engine, response_id, params)
    created = int(time.time())
    if body.stream:
        stream = CompletionStream(response_id, created, model, body.include_usage)
        return sse_response(_events(engine, jobs, stream))

    completions = await until_disconnected(request, collect(engine, jobs))
    if completions is None:
        return client_gone()
    response = CompletionResponse(
        id=response_id,
        created=created,
        model=model,
        choices=[
            CompletionChoice(text=c.text, index=i, finish_reason=c.finish_reason)
            for i, c in enumerate(completions)
        ],
        usage=Usage.of(
            sum(c.prompt_tokens for c in completions), sum(c.completion_tokens for c in completions)
        ),
    )
    return json_response(response)


async def _events(engine: EngineClient, jobs: list[Job], stream: CompletionStream) -> AsyncIterator[str]:
    """Text chunks per choice, one finish chunk per choice, [usage chunk], [DONE]; or error, [DONE]."""
    prompt_tokens = completion_tokens = finished = 0
    try:
        async with aclosing(merged(engine, jobs)) as outputs:
            async for index, output in outputs:
                check_output(output)
                if output.text:
                    yield stream.chunk([CompletionChoice(text=output.text, index=index, finish_reason=None)])
                if output.finished:
                    reason = finish_reason_of(output)
                    yield stream.chunk([CompletionChoice(text="", index=index, finish_reason=reason)])
                    prompt_tokens += output.prompt_tokens
                    completion_tokens += output.completion_tokens
                    finished += 1
        if finished < len(jobs):
            raise server_error("The engine ended a generation without a final output.")
        if stream.include_usage:
            yield stream.chunk([], Usage.of(prompt_tokens, completion_tokens))
    except Exception as exc:
        yield error_event(as_api_error(exc))
    yield DONE
