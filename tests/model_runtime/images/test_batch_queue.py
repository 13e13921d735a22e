"""The batching rule on its own: the oldest request picks the key, compatible ones join up to the
limit, cancelled ones leave, closing wakes the worker."""

from __future__ import annotations

import threading

from model_runtime.images.api import ImageSize
from model_runtime.images.batch_queue import BatchKey, BatchQueue, ImageJob

SMALL = BatchKey("m", ImageSize(16, 16), 4)
WIDE = BatchKey("m", ImageSize(32, 16), 4)
SLOW = BatchKey("m", ImageSize(16, 16), 9)


def job(job_id: str, key: BatchKey = SMALL, n: int = 1) -> ImageJob:
    return ImageJob(job_id, key, job_id, None, list(range(n)), on_done=lambda result: None)


def ids(batch: list[ImageJob] | None) -> list[str]:
    assert batch is not None
    return [j.job_id for j in batch]


def test_the_oldest_request_picks_the_key_and_compatible_ones_join() -> None:
    queue = BatchQueue(max_batch_images=8)
    for j in [job("a", WIDE), job("b"), job("c", WIDE), job("d", SLOW), job("e")]:
        queue.put(j)
    assert ids(queue.take_batch()) == ["a", "c"]
    assert ids(queue.take_batch()) == ["b", "e"]
    assert ids(queue.take_batch()) == ["d"]
    assert queue.pending() == 0


def test_a_batch_stops_at_the_image_limit_but_never_leaves_a_request_behind_forever() -> None:
    queue = BatchQueue(max_batch_images=4)
    for j in [job("big", n=6), job("x", n=3), job("y", n=2)]:
        queue.put(j)
    assert ids(queue.take_batch()) == ["big"]  # alone over the limit: it still runs
    assert ids(queue.take_batch()) == ["x"]  # x + y would be 5 images
    assert ids(queue.take_batch()) == ["y"]


def test_cancel_removes_a_pending_request() -> None:
    queue = BatchQueue(max_batch_images=8)
    a, b = job("a"), job("b")
    queue.put(a)
    queue.put(b)
    queue.cancel("a")
    assert a.cancelled and ids(queue.take_batch()) == ["b"]
    queue.cancel("never-queued")  # harmless


def test_close_wakes_a_waiting_worker_and_returns_what_never_ran() -> None:
    queue = BatchQueue(max_batch_images=8)
    got: list[list[ImageJob] | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.take_batch()))
    waiter.start()
    dropped = queue.close()
    waiter.join(timeout=5)
    assert got == [None] and dropped == []
    queue2 = BatchQueue(max_batch_images=8)
    queue2.put(job("left"))
    assert ids(queue2.close()) == ["left"]
