"""`atenea bench images`: the image worker's batching against one request at a time, same model,
same process, same machine.

Both sides make the same number of single-image requests (same prompts, seeds, size and steps)
through the real `AsyncImageWorker`: the baseline awaits each before sending the next, as a client
without concurrency would; the batched side sends them all at once and the worker runs them as one
pipeline call. Rounds alternate so a machine whose load drifts does not favour either side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.bench import fmt, write_json

PROMPTS = [
    "a red circle on a blue background",
    "a yellow star on a black background",
    "a green square on a white background",
    "a purple triangle on an orange background",
    "a white diamond on a green background",
    "a blue cross on a yellow background",
    "a pink circle on a gray background",
    "a cyan star on a brown background",
]


@dataclass(frozen=True)
class Round:
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


async def one_at_a_time(worker: Any, model: str, params: list[Any]) -> Round:
    start = time.perf_counter()
    for p in params:
        await worker.generate(model, p)
    return Round(len(params), time.perf_counter() - start)


async def all_at_once(worker: Any, model: str, params: list[Any]) -> Round:
    start = time.perf_counter()
    await asyncio.gather(*(worker.generate(model, p) for p in params))
    return Round(len(params), time.perf_counter() - start)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench.engine import device_name
    from model_runtime.images import (
        AsyncImageWorker,
        ImageParams,
        ImageSize,
        ImageWorkerConfig,
        load_image_model,
        resolve_image_model,
    )

    resolved = resolve_image_model(args.image_model)
    holder: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        model = load_image_model(resolved, args.device, cpu_threads=args.threads)
        holder["device"] = device_name(model.device)  # on the worker thread: its thread count
        return {model.info.id: model}

    worker = AsyncImageWorker(load, ImageWorkerConfig(max_batch_images=args.concurrency, gather_s=0.005))
    await worker.start()
    try:
        info = worker.models[0]
        size = ImageSize.parse(args.size) if args.size else info.default_size
        steps = args.steps or info.default_steps
        params = [
            ImageParams(PROMPTS[i % len(PROMPTS)], size=size, steps=steps, seed=i)
            for i in range(args.concurrency)
        ]
        await all_at_once(worker, info.id, params[:2])  # warm-up: first-call costs out of the timings
        sequential: list[Round] = []
        batched: list[Round] = []
        for _ in range(args.rounds):
            sequential.append(await one_at_a_time(worker, info.id, params))
            batched.append(await all_at_once(worker, info.id, params))
        batches_run = worker.worker.batches_run
    finally:
        await worker.shutdown()
    seq = statistics.median(r.images_per_s for r in sequential)
    bat = statistics.median(r.images_per_s for r in batched)
    return {
        "model": info.id,
        "device": holder["device"],
        "size": str(size),
        "steps": steps,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "one_at_a_time_images_per_s": seq,
        "batched_images_per_s": bat,
        "ratio": bat / seq if seq > 0 else None,
        "one_at_a_time_seconds_per_image": 1 / seq if seq > 0 else None,
        "pipeline_calls": batches_run,
        "rounds_detail": {
            "one_at_a_time_s": [r.seconds for r in sequential],
            "batched_s": [r.seconds for r in batched],
        },
    }


def print_report(result: dict[str, Any]) -> None:
    print(f"image model {result['model']} on {result['device']}")
    print(
        f"{result['concurrency']} single-image requests, {result['size']}, {result['steps']} steps, "
        f"median of {result['rounds']} rounds"
    )
    print(f"  one at a time : {fmt(result['one_at_a_time_images_per_s'])} images/s "
          f"({fmt(result['one_at_a_time_seconds_per_image'])} s per image)")  # fmt: skip
    print(f"  all at once   : {fmt(result['batched_images_per_s'])} images/s (batched by the worker)")
    print(f"  ratio         : {fmt(result['ratio'])}x")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model_runtime.images import DEFAULT_IMAGE_MODEL

    parser.add_argument("--image-model", default=DEFAULT_IMAGE_MODEL, help="built-in name, folder or file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternating")
    parser.add_argument("--size", default=None, help="WxH; unset: the model's default")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps; unset: the model's default")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads; unset: half the cores")
    parser.add_argument("--json", default=None, help="also write the results to this file")


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(bench(args))
    print_report(result)
    if args.json:
        write_json(args.json, result)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("images", help="the image worker: batched requests vs one at a time")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atenea bench images")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
