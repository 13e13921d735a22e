"""The FastAPI application: routes, error handlers, and a lifespan that owns the engine."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from fastapi import FastAPI

import model_runtime
from app.admission import Admission
from app.embedding_runtime import encoder_first, start_encoder
from app.errors import install_error_handlers
from app.image_runtime import images_first, start_image_worker
from app.image_store import ImageStore
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.middleware import install_middleware
from app.middleware.auth import load_api_keys
from app.routers import chat, completions, embeddings, health, metrics, models, playground
from app.routers import images as image_routes
from app.services.models import ModelNotServed
from app.settings import Settings, get_settings
from app.watchdog import Watchdog
from model_runtime import EncoderClient, EngineClient, EngineConfig
from model_runtime.images import AsyncImageWorker, ImageClient

if TYPE_CHECKING:
    from model_runtime.encoder import AsyncEncoder

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
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enforce_eager=settings.enforce_eager,
        overlap_steps=settings.overlap_steps,
    )


def _engine_lifespan(
    settings: Settings, engine_config: EngineConfig | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = engine_config or await asyncio.to_thread(engine_config_from_settings, settings)
        engine, image_worker, encoder = await _start_models(settings, config)
        app.state.engine = engine
        app.state.images = image_worker
        app.state.encoder = encoder
        app.state.lifecycle.mark_serving()
        watchdog = _start_watchdog(app, settings)
        try:
            yield
        finally:
            await watchdog.stop()
            app.state.engine = None
            app.state.images = None
            app.state.encoder = None
            if encoder is not None:
                await encoder.shutdown()
            if image_worker is not None:
                await image_worker.shutdown()
            await engine.shutdown()

    return lifespan


def _watchdog_lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """For a given engine: the app does not own it, but still watches it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watchdog = _start_watchdog(app, settings)
        try:
            yield
        finally:
            await watchdog.stop()

    return lifespan


def _start_watchdog(app: FastAPI, settings: Settings) -> Watchdog:
    watchdog = Watchdog(
        lambda: getattr(app.state, "engine", None), app.state.lifecycle, settings.engine_stall_timeout
    )
    watchdog.start()
    return watchdog


async def _start_models(
    settings: Settings, config: EngineConfig
) -> tuple[model_runtime.EngineFront, AsyncImageWorker | None, AsyncEncoder | None]:
    """The text engine, the image worker and the embedding model, each loaded on a thread of its
    own. On a CPU the engine starts first. What shares the engine's GPU starts before it (the image
    pipeline, then the embedding model), so its weights are taken before the engine measures free
    memory; the engine also keeps the image pipeline's measured peak out of its KV cache (the
    encoder's activations are not reserved). Whatever started is shut down, last first, when a
    later start fails."""
    shutdowns: list[Callable[[], Awaitable[None]]] = []
    image_worker: AsyncImageWorker | None = None
    encoder: AsyncEncoder | None = None

    async def images() -> None:
        nonlocal image_worker
        image_worker = await start_image_worker(settings)
        if image_worker is not None:
            shutdowns.append(image_worker.shutdown)

    async def embeddings() -> None:
        nonlocal encoder
        # One id naming two models would make `model` ambiguous; the engine's id is its config's.
        image_ids = [info.id for info in image_worker.models] if image_worker is not None else []
        encoder = await start_encoder(settings, taken=[config.served_model_name, *image_ids])
        if encoder is not None:
            shutdowns.append(encoder.shutdown)

    gpu_images, gpu_encoder = images_first(settings), encoder_first(settings)
    try:
        if gpu_images:
            await images()
        if gpu_encoder:
            await embeddings()
        reserved = image_worker.reserved_device_bytes if image_worker is not None else 0
        if reserved:
            config = replace(config, reserved_gpu_memory_bytes=config.reserved_gpu_memory_bytes + reserved)
        engine = await _start_engine(config, settings.engine_process)
        shutdowns.append(lambda: _shutdown_quietly(engine))
        if not gpu_images:
            await images()
        if not gpu_encoder:
            await embeddings()
    except BaseException:
        for shutdown in reversed(shutdowns):
            try:
                await shutdown()
            except Exception:
                logger.exception("a shutdown after a failed start also failed")
        raise
    return engine, image_worker, encoder


async def _start_engine(config: EngineConfig, own_process: bool | None) -> model_runtime.EngineFront:
    engine = model_runtime.engine_for(config, own_process)
    logger.info(
        "starting engine for %s (%s) %s",
        config.served_model_name,
        config.model_path,
        "in a process of its own" if isinstance(engine, model_runtime.EngineProcess) else "on a thread",
    )
    try:
        await engine.start()  # loads the weights on the engine's own thread or process
    except BaseException:
        await _shutdown_quietly(engine)
        raise
    return engine


async def _shutdown_quietly(engine: model_runtime.EngineFront) -> None:
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
    images: ImageClient | None = None,
    encoder: EncoderClient | None = None,
) -> FastAPI:
    """A given `engine` (tests, embedding) is used as is: the app neither starts nor stops it.
    Otherwise the lifespan builds an engine (`model_runtime.engine_for`) from `engine_config`, or
    from `settings`.
    Given `images` are likewise used as is; otherwise the lifespan that builds the engine also starts
    the image worker `settings.image_model` names. A given `encoder` (the dedicated embedding model)
    is likewise used as is; otherwise that lifespan loads the one `settings.embedding_model` names.

    Raises OSError or ValueError when `--api-key-file` cannot be read or holds no key."""
    settings = settings or get_settings()
    api_keys = load_api_keys(settings.api_key, settings.api_key_file)
    app = FastAPI(
        title="Atenea",
        summary="An OpenAI-compatible inference server",
        version="0.1.0",
        lifespan=(
            _watchdog_lifespan(settings) if engine is not None else _engine_lifespan(settings, engine_config)
        ),
        **_lenient_content_type(),
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.images = images
    app.state.encoder = encoder
    app.state.image_store = ImageStore()
    app.state.lifecycle = lifecycle = Lifecycle(settings.shutdown_timeout)
    app.state.admission = admission = Admission(
        settings.max_num_seqs + settings.max_queued_requests, settings.max_queued_tokens
    )
    app.state.metrics = metrics_registry = Metrics()
    metrics_registry.watch_engine(lambda: getattr(app.state, "engine", None), lambda: admission.requests)
    if engine is not None:
        lifecycle.mark_serving()
    install_error_handlers(app)
    app.add_exception_handler(ModelNotServed, models.model_not_served)
    install_middleware(app, settings, api_keys, lifecycle, admission, metrics_registry)
    for router in (
        models.router,
        chat.router,
        completions.router,
        embeddings.router,
        health.router,
        metrics.router,
        playground.router,
        image_routes.router,
    ):
        app.include_router(router)
    if not api_keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without an API key: anyone who reaches it can use it", settings.host)
    return app
