"""Request-scoped access to what lives on app.state. Tests override these or set app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import engine_unavailable
from app.image_store import ImageStore
from app.request_context import RequestContext
from app.request_engine import RequestEngine
from app.settings import Settings
from model_runtime import EncoderClient, EngineClient
from model_runtime.images import ImageClient


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


def get_images(request: Request) -> ImageClient | None:
    """The image runtime, or None when the server was started without an image model."""
    images: ImageClient | None = getattr(request.app.state, "images", None)
    if images is not None and not images.is_alive():
        raise engine_unavailable()
    return images


def get_encoder(request: Request) -> EncoderClient | None:
    """The dedicated embedding model, or None when the server was started without one."""
    encoder: EncoderClient | None = getattr(request.app.state, "encoder", None)
    if encoder is not None and not encoder.is_alive():
        raise engine_unavailable()
    return encoder


def get_image_store(request: Request) -> ImageStore:
    store: ImageStore = request.app.state.image_store
    return store


EngineDep = Annotated[EngineClient, Depends(get_engine)]
ImagesDep = Annotated[ImageClient | None, Depends(get_images)]
EncoderDep = Annotated[EncoderClient | None, Depends(get_encoder)]
ImageStoreDep = Annotated[ImageStore, Depends(get_image_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
