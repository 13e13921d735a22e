"""Chat completions: messages -> prompt, validation before any byte is sent, then one JSON answer or
an OpenAI-shaped stream of the `n` choices interleaved; tool calls parsed out of the text."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace

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
    FinishReasonLiteral,
)
from app.schemas.common import Usage
from app.schemas.logprobs import ChoiceLogprobs, chat_logprobs
from app.schemas.tools import FunctionDelta, FunctionOut, ToolCallDelta, ToolCallOut
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
from model_runtime import (
    CallArguments,
    CallStart,
    ContentPiece,
    EngineClient,
    ParsedCall,
    RequestOutput,
    ToolCallParser,
    ToolChoice,
    call_constraint,
    parse_tool_calls,
)


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


@dataclass(frozen=True)
class ToolPolicy:
    """How this request's output is read for tool calls."""

    mode: ToolChoice
    parallel: bool

    @property
    def parses_calls(self) -> bool:
        return self.mode is not ToolChoice.NONE


async def create_chat_completion(
    body: ChatCompletionRequest, engine: EngineClient, request: Request
) -> Response:
    model = served_model(engine, body.model).id
    params = body.to_sampling_params()
    tools = [tool.to_spec() for tool in body.tools or []]
    policy = ToolPolicy(body.tool_mode(), body.parallel_tool_calls is not False)
    if policy.mode in (ToolChoice.REQUIRED, ToolChoice.NAMED):
        # The grammar makes the output exactly the call(s) the client demanded.
        # A named function is called once; "required" may call several when parallel calls are on.
        forced = body.forced_function()
        parallel = policy.parallel and forced is None
        params = replace(params, constraint=call_constraint(tools, forced, parallel))
    messages = body.chat_messages()
    prompt_ids = engine.render_chat(messages, tools) if policy.parses_calls else engine.render_chat(messages)
    # Raises before the response starts, so a bad request is a 400, never a broken stream.
    engine.validate(prompt_ids, params)

    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    job = Job(response_id, prompt_ids, params)
    if body.stream:
        stream = ChatStream(response_id, created, model, body.include_usage)
        return sse_response(_events(engine, job, stream, policy))

    completions = await until_disconnected(request, collect(engine, [job]))
    if completions is None:
        return client_gone()
    prompt_tokens, completion_tokens = usage_of(completions)
    response = ChatCompletionResponse(
        id=response_id,
        created=created,
        model=model,
        choices=[_choice(c, policy) for c in completions],
        usage=Usage.of(prompt_tokens, completion_tokens),
    )
    return json_response(response)


def _choice(completion: Completion, policy: ToolPolicy) -> ChatCompletionChoice:
    content: str | None = completion.text
    calls: list[ParsedCall] = []
    if policy.parses_calls:
        content, calls = parse_tool_calls(completion.text)
        calls = calls if policy.parallel else calls[:1]
    reason: FinishReasonLiteral = completion.finish_reason
    if calls and reason == "stop":
        reason = "tool_calls"
    message = ChatCompletionMessage(
        content=content,
        tool_calls=[_call_out(c) for c in calls] if calls else None,
    )
    logprobs = chat_logprobs(completion.logprobs) if completion.logprobs is not None else None
    return ChatCompletionChoice(
        index=completion.index, message=message, logprobs=logprobs, finish_reason=reason
    )


def _call_out(call: ParsedCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionOut(name=call.name, arguments=call.arguments))


class _ChoiceStream:
    """One choice's chunks: content deltas, tool-call deltas as OpenAI streams them (id, type and
    name first, then the arguments), and its own finish."""

    def __init__(self, index: int, policy: ToolPolicy) -> None:
        self.index = index
        self.policy = policy
        self.parser = ToolCallParser() if policy.parses_calls else None
        self.calls = 0

    def on_output(self, output: RequestOutput) -> list[ChatCompletionChunkChoice]:
        logprobs = chat_logprobs(output.logprobs) if output.logprobs else None
        if self.parser is None:
            if not output.text and logprobs is None:
                return []
            return [self._delta(ChatCompletionDelta(content=output.text), logprobs)]
        chunks = self._parsed(self.parser.feed(output.text))
        if output.finished:
            chunks += self._parsed(self.parser.finish())
        if logprobs is not None:
            if chunks and chunks[0].delta.content is not None:
                chunks[0] = self._delta(chunks[0].delta, logprobs)
            else:
                chunks.insert(0, self._delta(ChatCompletionDelta(content=""), logprobs))
        return chunks

    def finish(self, output: RequestOutput) -> ChatCompletionChunkChoice:
        reason: FinishReasonLiteral = finish_reason_of(output)
        if self.calls and reason == "stop":
            reason = "tool_calls"
        return ChatCompletionChunkChoice(index=self.index, delta=ChatCompletionDelta(), finish_reason=reason)

    def _parsed(
        self, events: list[ContentPiece | CallStart | CallArguments]
    ) -> list[ChatCompletionChunkChoice]:
        chunks = []
        for event in events:
            if isinstance(event, ContentPiece):
                if event.text:
                    chunks.append(self._delta(ChatCompletionDelta(content=event.text), None))
                continue
            if event.index and not self.policy.parallel:
                continue  # parallel_tool_calls: false keeps the first call only
            if isinstance(event, CallStart):
                self.calls += 1
                delta = ToolCallDelta(
                    index=event.index,
                    id=event.id,
                    type="function",
                    function=FunctionDelta(name=event.name, arguments=""),
                )
            else:
                delta = ToolCallDelta(index=event.index, function=FunctionDelta(arguments=event.text))
            chunks.append(self._delta(ChatCompletionDelta(tool_calls=[delta]), None))
        return chunks

    def _delta(
        self, delta: ChatCompletionDelta, logprobs: ChoiceLogprobs | None
    ) -> ChatCompletionChunkChoice:
        return ChatCompletionChunkChoice(index=self.index, delta=delta, logprobs=logprobs)


async def _events(
    engine: EngineClient, job: Job, stream: ChatStream, policy: ToolPolicy
) -> AsyncGenerator[str, None]:
    """Role chunks, then each choice's deltas and finish, [usage chunk], [DONE]; or error, [DONE]."""
    choices = [_ChoiceStream(i, policy) for i in range(job.params.n)]
    for choice in choices:
        yield stream.chunk(
            [
                ChatCompletionChunkChoice(
                    index=choice.index, delta=ChatCompletionDelta(role="assistant", content="")
                )
            ]
        )
    try:
        finished = 0
        prompt_tokens = completion_tokens = 0
        async with aclosing(merged(engine, [job])) as outputs:
            async for _, output in outputs:
                check_output(output)
                choice = choices[output.index]
                for part in choice.on_output(output):
                    yield stream.chunk([part])
                if output.finished:
                    finished += 1
                    yield stream.chunk([choice.finish(output)])
                    prompt_tokens = output.prompt_tokens
                    completion_tokens += output.completion_tokens
        if finished < len(choices):
            raise server_error("The engine ended a generation without a final output.")
        if stream.include_usage:
            yield stream.chunk([], Usage.of(prompt_tokens, completion_tokens))
    except Exception as exc:
        yield error_event(as_api_error(exc))
    yield DONE
