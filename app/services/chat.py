"""Chat completions: messages -> prompt, validation before any byte is sent, then one JSON answer or
an OpenAI-shaped stream."""

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
from app.schemas.chat import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from app.schemas.common import Usage
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
from model_runtime import EngineClient


@dataclass(frozen=True)
class ChatStream:
    """What every chunk of one response shares."""

    id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, choices: list[ChatCompletionChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        # With include_usage every chunk carries "usage" (null until the last); without, none does.
        return body.model_dump_json(exclude=None if self.include_usage else {"usage"})


async def create_chat_completion(
    body: ChatCompletionRequest, engine: EngineClient, request: Request
) -> Response:
    model = served_model(engine, body.model).id
    params = body.to_sampling_params()
    prompt_ids = engine.render_chat(body.chat_messages())
    # Raises before the response starts, so a bad request is a 400, never a broken stream.
    engine.validate(prompt_ids, params)

    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    job = Job(response_id, prompt_ids, params)
    if body.stream:
        stream = ChatStream(response_id, created, model, body.include_usage)
        return sse_response(_events(engine, job, stream))

    completions = await until_disconnected(request, collect(engine, [job]))
    if completions is None:
        return client_gone()
    (completion,) = completions
    response = ChatCompletionResponse(
        id=response_id,
        created=created,
        model=model,
        choices=[
            ChatCompletionChoice(
                index=0,
                message=ChatCompletionMessage(content=completion.text),
                finish_reason=completion.finish_reason,
            )
        ],
        usage=Usage.of(completion.prompt_tokens, completion.completion_tokens),
    )
    return json_response(response)


async def _events(engine: EngineClient, job: Job, stream: ChatStream) -> AsyncIterator[str]:
    """role chunk, content chunks, finish chunk, [usage chunk], [DONE]; or an error event, [DONE]."""
    yield stream.chunk(
        [ChatCompletionChunkChoice(index=0, delta=ChatCompletionDelta(role="assistant", content=""))]
    )
    try:
        finished = False
        async with aclosing(merged(engine, [job])) as outputs:
            async for index, output in outputs:
                check_output(output)
                finished = finished or output.finished
                if output.text:
                    delta = ChatCompletionDelta(content=output.text)
                    yield stream.chunk([ChatCompletionChunkChoice(index=index, delta=delta)])
                if output.finished:
                    finish = ChatCompletionChunkChoice(
                        index=index, delta=ChatCompletionDelta(), finish_reason=finish_reason_of(output)
                    )
                    yield stream.chunk([finish])
                    if stream.include_usage:
                        yield stream.chunk([], Usage.of(output.prompt_tokens, output.completion_tokens))
        if not finished:
            raise server_error("The engine ended a generation without a final output.")
    except Exception as exc:
        yield error_event(as_api_error(exc))
    yield DONE
