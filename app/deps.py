"""Request-scoped access to what lives on app.state. Tests override these or set app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import engine_unavailable
from app.request_context import RequestContext
from app.request_engine import RequestEngine
from app.settings import Settings
from model_runtime import EngineClient


def get_engine(request: Request) -> EngineClient:
    """The engine, wrapped for this request: its token admission, deadline and metrics."""
    engine: EngineClient | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.is_alive():
        # A dead engine would accept the request and never answer it.
        raise engine_unavailable()
    context: RequestContext | None = getattr(request.state, "context", None)
    if context is None:  # an app assembled without the request middleware
        return engine
    state = request.app.state
    return RequestEngine(engine, context, state.admission, state.metrics)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[EngineClient, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
