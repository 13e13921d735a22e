"""The event loop's side of an engine, wherever the engine runs: the tokenizer, validation, and one
`asyncio.Queue` per request fed with each engine turn's outputs. `AsyncEngine` (engine on a thread)
and `EngineProcess` (engine in a process of its own) differ only in how messages get there.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from model_runtime.api import (
    ChatMessage,
    EngineStats,
    FinishReason,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    ToolSpec,
)
from model_runtime.engine_loop import Abort, Add, Message, failed_output
from model_runtime.request_checks import check_request
from model_runtime.tokenizer import Tokenizer


class EngineFront(ABC):
    """Implements `EngineClient` over `_send`; subclasses own the engine's life."""

    def __init__(self) -> None:
        self._streams: dict[str, asyncio.Queue[RequestOutput]] = {}

    @property
    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    @property
    @abstractmethod
    def tokenizer(self) -> Tokenizer: ...

    @abstractmethod
    def is_alive(self) -> bool: ...

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    def _send(self, message: Message) -> None:
        """Hands a message to the engine; it takes effect at the next step boundary."""

    @abstractmethod
    async def start(self) -> None:
        """Loads the model and returns once it is ready to serve."""

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]: ...

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] | None = None
    ) -> list[int]:
        return self.tokenizer.render_chat(messages, tools=tools)

    def validate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        check_request(prompt_token_ids, params, self.model_info)

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
        self._send(Add(request_id, list(prompt_token_ids), params))
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
        self._send(Abort(request_id))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        # On the event loop: route each output to its request's queue (gone if it disconnected).
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put_nowait(out)

    def _fail_streams(self, message: str) -> None:
        """On the event loop: ends every request in flight with an error, for an engine that can no
        longer say so itself."""
        for request_id, stream in self._streams.items():
            stream.put_nowait(failed_output(request_id, 0, message))


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
