"""Pending image requests, and the rule that groups them into one pipeline call.

Requests that share a model, a size and a step count can run as one batch: the pipeline denoises
all their latents together, which on a CPU or a GPU costs far less than running them one by one.
The oldest request decides the batch's key, so no request waits behind a stream of others.
Thread-safe: the event loop adds and cancels, the worker thread takes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model_runtime.images.api import ImageSize


@dataclass(frozen=True)
class BatchKey:
    model_id: str
    size: ImageSize
    steps: int


@dataclass
class ImageJob:
    """One request on its way through the worker. `seeds` has one entry per image."""

    job_id: str
    key: BatchKey
    prompt: str
    negative_prompt: str | None
    seeds: list[int]
    # Called once, on the worker thread, with the images or the exception that failed the job.
    on_done: Callable[[list[np.ndarray] | BaseException], None]
    cancelled: bool = field(default=False)

    @property
    def n(self) -> int:
        return len(self.seeds)


class BatchQueue:
    def __init__(self, max_batch_images: int, gather_s: float = 0.0) -> None:
        """`gather_s`: once work arrives at an idle worker, how long to wait for companions to join
        it. A few milliseconds lets requests sent together run together."""
        self.max_batch_images = max_batch_images
        self.gather_s = gather_s
        self._pending: list[ImageJob] = []
        self._jobs: dict[str, ImageJob] = {}  # pending or running, by id
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: ImageJob) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the image worker has stopped")
            self._pending.append(job)
            self._jobs[job.job_id] = job
            self._cond.notify_all()

    def cancel(self, job_id: str) -> None:
        """Drops a pending job; a running one is marked so the worker can stop early or skip it."""
        with self._cond:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)

    def done(self, job: ImageJob) -> None:
        with self._cond:
            self._jobs.pop(job.job_id, None)

    def close(self) -> list[ImageJob]:
        """Wakes the worker for good; returns the jobs that will never run."""
        with self._cond:
            self._closed = True
            dropped, self._pending = self._pending, []
            for job in dropped:
                self._jobs.pop(job.job_id, None)
            self._cond.notify_all()
            return dropped

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def take_batch(self) -> list[ImageJob] | None:
        """Blocks until work arrives; returns the next batch, or None once closed."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if self.gather_s > 0 and self._images_for(self._pending[0].key) < self.max_batch_images:
                deadline = time.monotonic() + self.gather_s
                while (left := deadline - time.monotonic()) > 0 and not self._closed:
                    self._cond.wait(left)
                if self._closed or not self._pending:
                    return None if self._closed else []
            key = self._pending[0].key
            batch: list[ImageJob] = []
            images = 0
            for job in list(self._pending):
                if job.key != key:
                    continue
                # The first job always goes, even when its n alone exceeds the limit.
                if batch and images + job.n > self.max_batch_images:
                    break
                batch.append(job)
                images += job.n
                self._pending.remove(job)
            return batch

    def _images_for(self, key: BatchKey) -> int:
        return sum(job.n for job in self._pending if job.key == key)
