"""Starting the image worker the settings ask for (or none), for the app's lifespan."""

from __future__ import annotations

import logging

from app.settings import Settings
from model_runtime.images import (
    AsyncImageWorker,
    ImageWorkerConfig,
    ResolvedImageModel,
    load_image_model,
    peak_device_bytes,
    resolve_image_model,
    runs_on_cuda,
)
from model_runtime.images.async_worker import MAX_IMAGES

logger = logging.getLogger(__name__)

DISABLED = "none"


def images_enabled(settings: Settings) -> bool:
    return settings.image_model.strip().lower() != DISABLED


def images_first(settings: Settings) -> bool:
    """Whether the image worker starts before the text engine: when both share a GPU, so that the
    pipeline's weights are resident when the engine measures free memory for its KV cache."""
    return images_enabled(settings) and runs_on_cuda(settings.device)


def resolved_image_model(settings: Settings) -> ResolvedImageModel | None:
    """Where the image model is, or None when images are off. Raises ValueError for a model that
    cannot be served, before anything is loaded."""
    return resolve_image_model(settings.image_model) if images_enabled(settings) else None


async def start_image_worker(settings: Settings) -> AsyncImageWorker | None:
    """The worker, loaded; on a GPU its `reserved_device_bytes` holds the pipeline's measured peak."""
    resolved = resolved_image_model(settings)
    if resolved is None:
        logger.info("image generation is off (--image-model none)")
        return None
    logger.info("starting the image worker for %s (%s)", resolved.served_name, resolved.path)
    device, threads = settings.device, settings.image_cpu_threads
    # The largest pipeline call the worker makes: a full batch, or one request's n that runs whole.
    largest_batch = max(settings.image_max_batch_size, MAX_IMAGES)
    reserved = 0

    def load() -> dict:
        nonlocal reserved
        model = load_image_model(resolved, device, cpu_threads=threads)
        reserved = peak_device_bytes(model, largest_batch)
        return {model.info.id: model}

    worker = AsyncImageWorker(load, ImageWorkerConfig(max_batch_images=settings.image_max_batch_size))
    try:
        await worker.start()  # loads the pipeline on the worker's own thread
    except BaseException:
        await worker.shutdown()
        raise
    worker.reserved_device_bytes = reserved
    if reserved:
        logger.info("the image model needs %.0f MiB of GPU memory at its peak", reserved / 2**20)
    return worker
