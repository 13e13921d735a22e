"""An image model behind the worker's protocol that draws flat colours from the seed, records its
calls, can be held mid-run and fails on request: for testing batching, cancellation and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model_runtime.images.api import ImageModelInfo, ImageSize

FAIL_WORD = "explode"


@dataclass
class Call:
    prompts: list[str]
    seeds: list[int]
    size: ImageSize
    steps: int
    stopped: bool = False


@dataclass
class FakeImageModel:
    info: ImageModelInfo = field(
        default_factory=lambda: ImageModelInfo(
            id="fake-images",
            sizes=(ImageSize(16, 16), ImageSize(32, 16)),
            default_steps=4,
            max_steps=50,
            created=1700000000,
        )
    )
    calls: list[Call] = field(default_factory=list)
    # While cleared, a run waits between steps (seeing `should_stop` each time) until it is set.
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        size: ImageSize,
        steps: int,
        seeds: Sequence[int],
        should_stop: Callable[[], bool],
    ) -> list[np.ndarray] | None:
        call = Call(list(prompts), list(seeds), size, steps)
        self.calls.append(call)
        self.started.set()
        if any(FAIL_WORD in p for p in prompts):
            raise RuntimeError(f"the prompt asked to {FAIL_WORD}")
        for _ in range(steps):
            while not self.gate.is_set():
                if should_stop():
                    call.stopped = True
                    return None
                time.sleep(0.001)
            if should_stop():
                call.stopped = True
                return None
        return [np.full((size.height, size.width, 3), seed % 256, dtype=np.uint8) for seed in seeds]
