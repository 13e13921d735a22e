"""The diffusion side of the runtime: image models (diffusers pipelines) behind a batching worker
thread of their own. Like the rest of `model_runtime`, it knows nothing of HTTP; these are the
names `app` uses. Nothing here imports torch or diffusers until a model is loaded."""

from model_runtime.images.api import (
    ImageClient,
    ImageError,
    ImageGenerationFailed,
    ImageModelInfo,
    ImageParams,
    ImageResult,
    ImageSize,
)
from model_runtime.images.async_worker import AsyncImageWorker, ImageWorkerConfig
from model_runtime.images.loader import (
    DEFAULT_IMAGE_MODEL,
    ResolvedImageModel,
    load_image_model,
    resolve_image_model,
    runs_on_cuda,
)
from model_runtime.images.memory import peak_device_bytes

__all__ = [
    "DEFAULT_IMAGE_MODEL",
    "AsyncImageWorker",
    "ImageClient",
    "ImageError",
    "ImageGenerationFailed",
    "ImageModelInfo",
    "ImageParams",
    "ImageResult",
    "ImageSize",
    "ImageWorkerConfig",
    "ResolvedImageModel",
    "load_image_model",
    "peak_device_bytes",
    "resolve_image_model",
    "runs_on_cuda",
]
