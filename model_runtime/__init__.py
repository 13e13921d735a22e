"""Atenea's inference runtime: continuous batching over a paged KV cache. Knows nothing of HTTP."""

from model_runtime.api import (
    ChatMessage,
    ChatTemplateError,
    Constraint,
    ConstraintKind,
    ContextLengthExceeded,
    Embeddings,
    EncoderClient,
    EngineClient,
    EngineError,
    EngineStats,
    FinishReason,
    InvalidParameter,
    InvalidPrompt,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
    ToolChoice,
    ToolSpec,
    TopLogprob,
)
from model_runtime.config import EngineConfig
from model_runtime.tool_calls import (
    CallArguments,
    CallStart,
    ContentPiece,
    ParsedCall,
    ToolCallParser,
    call_constraint,
    parse_tool_calls,
)

__all__ = [
    "AsyncEncoder",
    "AsyncEngine",
    "EngineFront",
    "EngineProcess",
    "engine_for",
    "CallArguments",
    "CallStart",
    "ContentPiece",
    "ParsedCall",
    "ToolCallParser",
    "call_constraint",
    "parse_tool_calls",
    "ChatMessage",
    "ChatTemplateError",
    "Constraint",
    "ConstraintKind",
    "ContextLengthExceeded",
    "Embeddings",
    "EncoderClient",
    "EngineClient",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "FinishReason",
    "InvalidParameter",
    "InvalidPrompt",
    "ModelInfo",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "ToolChoice",
    "ToolSpec",
    "TopLogprob",
    "resolve_model",
]


def __getattr__(name: str) -> object:
    # Lazy: importing the package for its dataclasses must not pay for torch.
    if name == "AsyncEngine":
        from model_runtime.async_engine import AsyncEngine

        return AsyncEngine
    if name in ("EngineProcess", "engine_for"):
        from model_runtime import engine_process

        return getattr(engine_process, name)
    if name == "EngineFront":
        from model_runtime.engine_front import EngineFront

        return EngineFront
    if name == "AsyncEncoder":
        from model_runtime.encoder import AsyncEncoder

        return AsyncEncoder
    if name == "resolve_model":
        from model_runtime.models.fetch import resolve_model

        return resolve_model
    raise AttributeError(name)
