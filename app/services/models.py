"""Which model ids this server answers to."""

from __future__ import annotations

from app.errors import model_not_found
from model_runtime import EngineClient, ModelInfo


def served_model(engine: EngineClient, requested: str) -> ModelInfo:
    """The served model if `requested` names it, else 404 model_not_found (as OpenAI)."""
    info = engine.model_info
    if requested != info.id:
        raise model_not_found(requested)
    return info
