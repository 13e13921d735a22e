"""The image worker behind its asyncio face: batching, cancellation, failure isolation, validation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from model_runtime.images import (
    AsyncImageWorker,
    ImageError,
    ImageGenerationFailed,
    ImageParams,
    ImageSize,
    ImageWorkerConfig,
)
from tests.model_runtime.images.fake_image_model import FAIL_WORD, FakeImageModel

MODEL = "fake-images"


async def start(model: FakeImageModel, max_batch: int = 16, gather_s: float = 0.0) -> AsyncImageWorker:
    worker = AsyncImageWorker(lambda: {MODEL: model}, ImageWorkerConfig(max_batch, gather_s))
    await worker.start()
    return worker


@pytest.fixture
def model() -> FakeImageModel:
    return FakeImageModel()


@pytest.fixture
async def worker(model: FakeImageModel) -> AsyncIterator[AsyncImageWorker]:
    w = await start(model)
    yield w
    model.gate.set()
    await w.shutdown()


async def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def hold_first_run(worker: AsyncImageWorker, model: FakeImageModel) -> asyncio.Task:
    """Starts a request that stays mid-run until the gate opens, so later ones queue up behind it."""
    model.gate.clear()
    task = asyncio.create_task(worker.generate(MODEL, ImageParams("first", seed=0)))
    await wait_until(model.started.is_set)
    return task


async def test_images_follow_their_seeds(worker: AsyncImageWorker) -> None:
    result = await worker.generate(MODEL, ImageParams("a red circle", n=3, seed=40))
    assert result.seeds == [40, 41, 42]
    assert [int(img[0, 0, 0]) for img in result.images] == [40, 41, 42]
    assert result.images[0].shape == (16, 16, 3)  # the model's default size


async def test_compatible_requests_queued_together_run_as_one_call(
    worker: AsyncImageWorker, model: FakeImageModel
) -> None:
    first = await hold_first_run(worker, model)
    same = [asyncio.create_task(worker.generate(MODEL, ImageParams(f"p{i}", seed=i))) for i in range(3)]
    other_size = asyncio.create_task(worker.generate(MODEL, ImageParams("wide", size=ImageSize(32, 16))))
    other_steps = asyncio.create_task(worker.generate(MODEL, ImageParams("slow", steps=9)))
    await wait_until(lambda: worker.queue.pending() == 5)
    model.gate.set()
    results = await asyncio.gather(first, *same, other_size, other_steps)
    assert [c.prompts for c in model.calls] == [["first"], ["p0", "p1", "p2"], ["wide"], ["slow"]]
    assert [int(r.images[0][0, 0, 0]) for r in results[1:4]] == [0, 1, 2]  # each got its own image
    assert results[4].images[0].shape == (16, 32, 3)


async def test_requests_sent_together_to_an_idle_worker_share_a_call(model: FakeImageModel) -> None:
    worker = await start(model, gather_s=0.05)
    try:
        await asyncio.gather(*(worker.generate(MODEL, ImageParams(f"p{i}")) for i in range(8)))
    finally:
        await worker.shutdown()
    assert [len(c.prompts) for c in model.calls] == [8]


async def test_a_batch_holds_at_most_max_batch_images(model: FakeImageModel) -> None:
    worker = await start(model, max_batch=4)
    try:
        first = await hold_first_run(worker, model)
        tasks = [asyncio.create_task(worker.generate(MODEL, ImageParams(f"p{i}", n=2))) for i in range(3)]
        await wait_until(lambda: worker.queue.pending() == 3)
        model.gate.set()
        await asyncio.gather(first, *tasks)
    finally:
        await worker.shutdown()
    assert [len(c.prompts) for c in model.calls] == [1, 4, 2]


async def test_a_failing_request_does_not_fail_its_batch_mates(
    worker: AsyncImageWorker, model: FakeImageModel
) -> None:
    first = await hold_first_run(worker, model)
    good1 = asyncio.create_task(worker.generate(MODEL, ImageParams("good one", seed=1)))
    bad = asyncio.create_task(worker.generate(MODEL, ImageParams(f"please {FAIL_WORD}")))
    good2 = asyncio.create_task(worker.generate(MODEL, ImageParams("good two", seed=2)))
    await wait_until(lambda: worker.queue.pending() == 3)
    model.gate.set()
    await first
    assert int((await good1).images[0][0, 0, 0]) == 1
    assert int((await good2).images[0][0, 0, 0]) == 2
    with pytest.raises(ImageGenerationFailed, match=FAIL_WORD):
        await bad
    # The batch failed once, then each request ran alone.
    assert [c.prompts for c in model.calls][1:] == [
        ["good one", f"please {FAIL_WORD}", "good two"],
        ["good one"],
        [f"please {FAIL_WORD}"],
        ["good two"],
    ]
    assert worker.is_alive()


async def test_a_cancelled_pending_request_never_runs(
    worker: AsyncImageWorker, model: FakeImageModel
) -> None:
    first = await hold_first_run(worker, model)
    doomed = asyncio.create_task(worker.generate(MODEL, ImageParams("doomed")))
    kept = asyncio.create_task(worker.generate(MODEL, ImageParams("kept")))
    await wait_until(lambda: worker.queue.pending() == 2)
    doomed.cancel()
    await wait_until(lambda: worker.queue.pending() == 1)
    model.gate.set()
    await asyncio.gather(first, kept)
    assert [c.prompts for c in model.calls] == [["first"], ["kept"]]


async def test_cancelling_the_only_request_of_a_run_stops_it(
    worker: AsyncImageWorker, model: FakeImageModel
) -> None:
    first = await hold_first_run(worker, model)
    first.cancel()
    await wait_until(lambda: model.calls[0].stopped)
    model.gate.set()
    # The worker goes on serving.
    assert len((await worker.generate(MODEL, ImageParams("next"))).images) == 1


async def test_a_partly_cancelled_batch_runs_on_for_the_others(model: FakeImageModel) -> None:
    worker = await start(model, gather_s=0.05)
    try:
        model.gate.clear()
        a = asyncio.create_task(worker.generate(MODEL, ImageParams("a")))
        b = asyncio.create_task(worker.generate(MODEL, ImageParams("b", seed=7)))
        await wait_until(model.started.is_set)  # a and b, together, held mid-run
        a.cancel()
        await asyncio.sleep(0.02)
        model.gate.set()
        assert int((await b).images[0][0, 0, 0]) == 7
    finally:
        await worker.shutdown()
    assert [c.prompts for c in model.calls] == [["a", "b"]]
    assert not model.calls[0].stopped


async def test_shutdown_fails_queued_requests(model: FakeImageModel) -> None:
    worker = await start(model)
    first = await hold_first_run(worker, model)
    queued = asyncio.create_task(worker.generate(MODEL, ImageParams("queued")))
    await wait_until(lambda: worker.queue.pending() == 1)
    model.gate.set()
    await first
    await worker.shutdown()
    # Served before the shutdown reached it, or refused by it: never left hanging.
    done, _ = await asyncio.wait({queued}, timeout=5)
    assert done


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        (ImageParams(""), "prompt", "must not be empty"),
        (ImageParams("   "), "prompt", "must not be empty"),
        (ImageParams("x" * 4001), "prompt", "maximum is 4000"),
        (ImageParams("x", n=0), "n", "between 1 and 10"),
        (ImageParams("x", n=11), "n", "between 1 and 10"),
        (ImageParams("x", size=ImageSize(64, 64)), "size", "Supported sizes: '16x16', '32x16'"),
        (ImageParams("x", steps=0), "num_inference_steps", "between 1 and 50"),
        (ImageParams("x", steps=51), "num_inference_steps", "between 1 and 50"),
        (ImageParams("x", seed=-1), "seed", "non-negative"),
    ],
)
async def test_invalid_requests_are_refused_before_queueing(
    worker: AsyncImageWorker, params: ImageParams, param: str, message: str
) -> None:
    with pytest.raises(ImageError, match=message) as info:
        await worker.generate(MODEL, params)
    assert info.value.param == param
    assert worker.queue.pending() == 0


async def test_an_unknown_model_is_refused(worker: AsyncImageWorker) -> None:
    with pytest.raises(ImageError, match="not an image model"):
        await worker.generate("smollm2-135m-instruct", ImageParams("x"))


async def test_a_model_that_fails_to_load_fails_start() -> None:
    def load() -> dict:
        raise ValueError("no such pipeline")

    worker = AsyncImageWorker(load)
    with pytest.raises(ValueError, match="no such pipeline"):
        await worker.start()
    assert not worker.is_alive()
