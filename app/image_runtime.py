"""Starting the image worker the settings ask for (or none), for the app's lifespan."""

from __future__ import annotations

import logging

from app.settings import Settings
from model_runtime.images import (
    AsyncImageWorker,
    ImageWorkerConfig,
    ResolvedImageModel,
    load_image_model,
    resolve_image_model,
)

logger = logging.getLogger(__name__)

DISABLED = "none"


def images_enabled(settings: Settings) -> bool:
    return settings.image_model.strip().lower() != DISABLED


def resolved_image_model(settings: Settings) -> ResolvedImageModel | None:
    """Where the image model is, or None when images are off. Raises ValueError for a model that
    cannot be served, before anything is loaded."""
    return resolve_image_model(settings.image_model) if images_enabled(settings) else None


async def start_image_worker(settings: Settings) -> AsyncImageWorker | None:
    resolved = resolved_image_model(settings)
    if resolved is None:
        logger.info("image generation is off (--image-model none)")
        return None
    logger.info("starting the image worker for %s (%s)", resolved.served_name, resolved.path)
    device, threads = settings.device, settings.image_cpu_threads

    def load() -> dict:
        model = load_image_model(resolved, device, cpu_threads=threads)
        return {model.info.id: model}

    worker = AsyncImageWorker(load, ImageWorkerConfig(max_batch_images=settings.image_max_batch_size))
    try:
        await worker.start()  # loads the pipeline on the worker's own thread
    except BaseException:
        await worker.shutdown()
        raise
    return worker
