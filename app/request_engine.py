"""The engine as one HTTP request sees it: the engine itself, plus that request's token admission,
its deadline (and the server's power to end it early), and its token metrics.

Routes get this wrapper from `deps.get_engine`, so every generation any service starts is bounded
and measured without the service knowing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from app.admission import Admission
from app.errors import APIError, server_error
from app.metrics import Metrics
from app.request_context import EndReason, RequestContext
from model_runtime import (
    ChatMessage,
    EngineClient,
    EngineStats,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    ToolSpec,
)


def ended_error(reason: EndReason) -> APIError:
    """The clean error a request gets when the server ends it."""
    if reason is EndReason.TIMEOUT:
        return APIError(
            408,
            "The request took longer than the server's time limit (--request-timeout) and was stopped.",
            type="timeout_error",
            code="request_timeout",
        )
    if reason is EndReason.SHUTDOWN:
        error = server_error(
            "The server is shutting down and stopped this request; retry it.", "server_shutting_down", 503
        )
    else:
        error = server_error(
            "The engine failed and the server is restarting; retry this request.", "engine_unavailable", 503
        )
    error.headers["Retry-After"] = "1"
    return error


class RequestEngine:
    """Implements EngineClient by delegation; see the module docstring for what it adds."""

    def __init__(
        self, engine: EngineClient, context: RequestContext, admission: Admission, metrics: Metrics
    ) -> None:
        self._engine = engine
        self._context = context
        self._admission = admission
        self._metrics = metrics

    @property
    def model_info(self) -> ModelInfo:
        return self._engine.model_info

    def encode(self, text: str) -> list[int]:
        return self._engine.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._engine.decode(token_ids)

    def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] | None = None
    ) -> list[int]:
        if tools is None:  # engines that predate tools take messages only
            return self._engine.render_chat(messages)
        return self._engine.render_chat(messages, tools)

    def validate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        self._engine.validate(prompt_token_ids, params)
        # Valid: it may now be queued, so it is what the token bound counts.
        budget = params.max_tokens or max(self.model_info.max_model_len - len(prompt_token_ids), 0)
        # The prompt is held once (its blocks are shared), each of the n samples has its own budget.
        self._admission.reserve_tokens(self._context, len(prompt_token_ids) + budget * params.n)

    def abort(self, request_id: str) -> None:
        self._engine.abort(request_id)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        return await self._engine.embed(inputs)

    def stats(self) -> EngineStats:
        return self._engine.stats()

    def is_alive(self) -> bool:
        return self._engine.is_alive()

    async def generate(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        context = self._context
        outputs = self._engine.generate(request_id, prompt_token_ids, params)
        last = time.perf_counter()
        first = True
        try:
            while True:
                try:
                    async with context.waiting():
                        output = await anext(outputs)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    # The cancelled wait has closed the engine's generator, which aborted the
                    # sequence and freed its KV blocks.
                    context.end_reason = context.timed_out_reason()
                    raise ended_error(context.end_reason) from None
                now = time.perf_counter()
                if output.token_ids:
                    if first:
                        if context.first_token_at is None:
                            context.first_token_at = now
                            self._metrics.ttft.observe(now - context.started)
                        context.prompt_tokens += output.prompt_tokens
                        self._metrics.prompt_tokens.inc(output.prompt_tokens)
                        first = False
                    else:
                        self._metrics.inter_token.observe(now - last)
                    context.completion_tokens += len(output.token_ids)
                    self._metrics.generation_tokens.inc(len(output.token_ids))
                    last = now
                if context.output_parts is not None and output.text:
                    context.output_parts.append(output.text)
                yield output
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]
