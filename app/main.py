"""The FastAPI application: routes, error handlers, and a lifespan that owns the engine."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

import model_runtime
from app.errors import install_error_handlers
from app.routers import chat, completions, health, models, playground
from app.settings import Settings, get_settings
from model_runtime import EngineClient, EngineConfig

logger = logging.getLogger(__name__)


def engine_config_from_settings(settings: Settings) -> EngineConfig:
    """Resolve the model (fetching and converting the default one the first time) and build the
    engine's configuration. Blocking: may download."""
    resolved = model_runtime.resolve_model(settings.model)
    return EngineConfig(
        model_path=resolved.path,
        served_model_name=settings.served_model_name or resolved.served_name,
        device=settings.device,
        dtype=settings.dtype,
        max_num_seqs=settings.max_num_seqs,
        max_model_len=settings.max_model_len,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        kv_cache_memory_gib=settings.kv_cache_memory_gib,
    )


def _engine_lifespan(
    settings: Settings, engine_config: EngineConfig | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = engine_config or await asyncio.to_thread(engine_config_from_settings, settings)
        logger.info("starting engine for %s (%s)", config.served_model_name, config.model_path)
        engine = model_runtime.AsyncEngine(config)
        try:
            await engine.start()  # loads the weights on the engine's own thread
        except BaseException:
            await _shutdown_quietly(engine)
            raise
        app.state.engine = engine
        try:
            yield
        finally:
            app.state.engine = None
            await engine.shutdown()

    return lifespan


async def _shutdown_quietly(engine: model_runtime.AsyncEngine) -> None:
    try:
        await engine.shutdown()
    except Exception:
        logger.exception("engine shutdown after a failed start also failed")


def _lenient_content_type() -> dict[str, bool]:
    """Parse a body sent without Content-Type as JSON, as older FastAPI always did and as clients
    that forget the header expect. Newer FastAPI makes this an option (off by default)."""
    if "strict_content_type" in inspect.signature(FastAPI.__init__).parameters:
        return {"strict_content_type": False}
    return {}


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    engine_config: EngineConfig | None = None,
) -> FastAPI:
    """A given `engine` (tests, embedding) is used as is: the app neither starts nor stops it.
    Otherwise the lifespan builds an AsyncEngine from `engine_config`, or from `settings`."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Atenea",
        summary="An OpenAI-compatible inference server",
        version="0.1.0",
        lifespan=None if engine is not None else _engine_lifespan(settings, engine_config),
        **_lenient_content_type(),
    )
    app.state.settings = settings
    app.state.engine = engine
    install_error_handlers(app)
    for router in (models.router, chat.router, completions.router, health.router, playground.router):
        app.include_router(router)
    return app
