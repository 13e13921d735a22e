"""The image worker thread: takes batches from the queue and runs them through the model.

It is a thread of its own, apart from the text engine's, so a long denoising run never holds up
token streaming. A batch that fails is retried one request at a time, so one bad request fails
alone instead of taking its batch-mates with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from model_runtime.images.api import ImageGenerationFailed
from model_runtime.images.batch_queue import BatchQueue, ImageJob
from model_runtime.images.pipeline import ImageModel

log = logging.getLogger(__name__)


class ImageWorker:
    def __init__(self, load_models: Callable[[], Mapping[str, ImageModel]], queue: BatchQueue) -> None:
        """`load_models` runs on the worker thread: the models are built where they will be used."""
        self._load_models = load_models
        self.queue = queue
        self.models: Mapping[str, ImageModel] = {}
        self.batches_run = 0  # pipeline calls made
        self.images_made = 0
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self, on_ready: Callable[[BaseException | None], None]) -> None:
        """Starts the thread; `on_ready` is called from it once the models are loaded (or failed to)."""
        self._thread = threading.Thread(target=self._run, args=(on_ready,), name="atenea-images", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Fails whatever is still queued, stops the thread after the batch in hand and joins it."""
        for job in self.queue.close():
            job.on_done(ImageGenerationFailed("the server is shutting down"))
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def _run(self, on_ready: Callable[[BaseException | None], None]) -> None:
        try:
            self.models = self._load_models()
        except BaseException as exc:
            self.failure = exc
            on_ready(exc)
            return
        on_ready(None)
        while (batch := self.queue.take_batch()) is not None:
            self.run_batch(batch)

    def run_batch(self, batch: list[ImageJob]) -> None:
        live = [job for job in batch if not job.cancelled]
        if not live:
            return
        try:
            self._generate(live)
        except Exception as exc:
            if len(live) == 1:
                log.exception("image request %s failed", live[0].job_id)
                self._finish(live[0], exc)
                return
            log.warning("a batch of %d image requests failed (%s); running them one by one", len(live), exc)
            for job in live:
                self.run_batch([job])

    def _generate(self, jobs: list[ImageJob]) -> None:
        key = jobs[0].key
        model = self.models[key.model_id]
        prompts = [job.prompt for job in jobs for _ in job.seeds]
        negatives = [job.negative_prompt or "" for job in jobs for _ in job.seeds]
        seeds = [seed for job in jobs for seed in job.seeds]
        images = model.generate(
            prompts,
            negatives,
            key.size,
            key.steps,
            seeds,
            # Stop early only when nobody is waiting any more; a partly cancelled batch runs on.
            should_stop=lambda: all(job.cancelled for job in jobs),
        )
        self.batches_run += 1
        if images is None:  # every job was cancelled mid-run
            for job in jobs:
                self.queue.done(job)
            return
        self.images_made += len(images)
        start = 0
        for job in jobs:
            self._finish(job, images[start : start + job.n])
            start += job.n

    def _finish(self, job: ImageJob, result: list | BaseException) -> None:
        self.queue.done(job)
        if not job.cancelled:
            job.on_done(result)
