"""The image worker's asyncio face: validate, submit, await; cancelling the await drops the work.

Results come back from the worker thread through `loop.call_soon_threadsafe` into one future per
request; the event loop never touches a tensor.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model_runtime.images.api import (
    ImageError,
    ImageGenerationFailed,
    ImageModelInfo,
    ImageParams,
    ImageResult,
)
from model_runtime.images.batch_queue import BatchKey, BatchQueue, ImageJob
from model_runtime.images.pipeline import ImageModel
from model_runtime.images.worker import ImageWorker

MAX_PROMPT_CHARS = 4000  # OpenAI's limit for dall-e-3; the text encoder truncates far sooner
MAX_IMAGES = 10


@dataclass(frozen=True)
class ImageWorkerConfig:
    max_batch_images: int = 16
    # How long a request arriving at an idle worker waits for others to share its pipeline call.
    gather_s: float = 0.005


class AsyncImageWorker:
    def __init__(
        self, load_models: Callable[[], Mapping[str, ImageModel]], config: ImageWorkerConfig | None = None
    ) -> None:
        self.config = config or ImageWorkerConfig()
        self.queue = BatchQueue(self.config.max_batch_images, self.config.gather_s)
        self.worker = ImageWorker(load_models, self.queue)
        # GPU memory the models need at their peak beyond their weights, for the text engine to keep
        # out of its KV cache when both share the device; 0 on a CPU. Set by whoever starts it.
        self.reserved_device_bytes = 0

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the models on the worker thread; returns once they are ready, raises if they fail."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready(exc: BaseException | None) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, ready, exc)

        self.worker.start(on_ready)
        await ready

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.worker.stop)

    def is_alive(self) -> bool:
        return self.worker.is_alive()

    # -- ImageClient ----------------------------------------------------------------------------

    @property
    def models(self) -> Sequence[ImageModelInfo]:
        return [model.info for model in self.worker.models.values()]

    def model(self, model_id: str) -> ImageModelInfo | None:
        model = self.worker.models.get(model_id)
        return None if model is None else model.info

    def validate(self, model_id: str, params: ImageParams) -> None:
        info = self.model(model_id)
        if info is None:
            raise ImageError(f"The model `{model_id}` is not an image model.", "model")
        if not params.prompt.strip():
            raise ImageError("The prompt must not be empty.", "prompt")
        if len(params.prompt) > MAX_PROMPT_CHARS:
            raise ImageError(
                f"The prompt is {len(params.prompt)} characters long; the maximum is {MAX_PROMPT_CHARS}.",
                "prompt",
            )
        if not 1 <= params.n <= MAX_IMAGES:
            raise ImageError(f"n must be between 1 and {MAX_IMAGES}; got {params.n}.", "n")
        if params.size is not None and params.size not in info.sizes:
            valid = ", ".join(f"'{s}'" for s in info.sizes)
            raise ImageError(
                f"'{params.size}' is not a size `{model_id}` supports. Supported sizes: {valid}.", "size"
            )
        if params.steps is not None and not 1 <= params.steps <= info.max_steps:
            raise ImageError(
                f"num_inference_steps must be between 1 and {info.max_steps}; got {params.steps}.",
                "num_inference_steps",
            )
        if params.seed is not None and not 0 <= params.seed < 2**63 - MAX_IMAGES:
            raise ImageError("seed must be a non-negative 64-bit integer.", "seed")

    async def generate(self, model_id: str, params: ImageParams) -> ImageResult:
        if not self.is_alive():
            raise RuntimeError("the image worker is not running")
        self.validate(model_id, params)
        info = self.model(model_id)
        assert info is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[np.ndarray]] = loop.create_future()
        seeds = (
            [params.seed + i for i in range(params.n)]
            if params.seed is not None
            else [secrets.randbits(31) for _ in range(params.n)]
        )
        job = ImageJob(
            job_id=uuid.uuid4().hex,
            key=BatchKey(model_id, params.size or info.default_size, params.steps or info.default_steps),
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seeds=seeds,
            on_done=lambda result: _resolve(loop, done, result),
        )
        self.queue.put(job)
        try:
            images = await done
        except asyncio.CancelledError:
            self.queue.cancel(job.job_id)
            raise
        return ImageResult(images, seeds)


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: object) -> None:
    """From the worker thread: settle `future` on its event loop with the images or the failure."""
    if isinstance(result, BaseException) and not isinstance(result, ImageError | ImageGenerationFailed):
        result = ImageGenerationFailed(f"image generation failed: {result}")
    if not loop.is_closed():
        loop.call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future, result: object) -> None:
    if future.done():  # cancelled meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
