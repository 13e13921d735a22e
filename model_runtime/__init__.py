"""Atenea's inference runtime: continuous batching over a paged KV cache. Knows nothing of HTTP."""

from model_runtime.api import (
    ChatMessage,
    ChatTemplateError,
    ContextLengthExceeded,
    EngineClient,
    EngineError,
    EngineStats,
    FinishReason,
    InvalidPrompt,
    ModelInfo,
    RequestOutput,
    SamplingParams,
)
from model_runtime.config import EngineConfig

__all__ = [
    "AsyncEngine",
    "ChatMessage",
    "ChatTemplateError",
    "ContextLengthExceeded",
    "EngineClient",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "FinishReason",
    "InvalidPrompt",
    "ModelInfo",
    "RequestOutput",
    "SamplingParams",
    "resolve_model",
]


def __getattr__(name: str) -> object:
    # Lazy: importing the package for its dataclasses must not pay for torch.
    if name == "AsyncEngine":
        from model_runtime.async_engine import AsyncEngine

        return AsyncEngine
    if name == "resolve_model":
        from model_runtime.models.fetch import resolve_model

        return resolve_model
    raise AttributeError(name)
