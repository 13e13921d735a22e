"""Profiles for `atenea bench engine --profile`: steady decode steps, and single requests.

What a GPU run needs to say where a step's time goes: how long a step takes on the host's clock,
how much of it the device spends in kernels, how many kernels and eager torch operations a step
launches, and which kernels take the most time. The steps profiled are decode steps at the
workload's batch: its prompts are sent again (the prefix cache serves them), and once every
request has its first token the next steps are recorded by torch's profiler.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from model_runtime.api import SamplingParams

if TYPE_CHECKING:
    from model_runtime.engine import Engine

TOP_KERNELS = 8


def profile_decode_steps(
    engine: Engine, prompts: Sequence[Sequence[int]], steps: int, temperature: float
) -> dict[str, Any]:
    """Profiles `steps` decode steps of `prompts` running together; returns the figures."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(temperature=temperature, max_tokens=steps + 8, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"profile-{i}", list(prompt), params)
    waiting = {f"profile-{i}" for i in range(len(prompts))}
    while waiting and engine.has_work():  # prefill, and every request's first token
        waiting.difference_update(out.request_id for out in engine.step())
    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(engine.device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            engine.step()
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        wall = time.perf_counter() - started
    while engine.has_work():  # the rest, unprofiled, so the engine ends idle
        engine.step()
    return summarize(prof.events(), steps, wall, len(prompts))


def profile_request(engine: Engine, prompt: Sequence[int], request_id: str) -> dict[str, Any]:
    """Profiles one request for one token from submission to its end (the prefix workload's time
    to first token): device time, kernels, eager ops and the host operations that cost the most,
    to tell a launch-bound prefill from a compute-bound one."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from app.bench.engine import run_engine_batch

    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(engine.device)
    # The host's time inside the model runner: preparing the inputs and launching every kernel
    # (on a GPU nothing there waits for the device), the part of a request no kernel shows.
    runner = engine.runner
    run = runner.run
    launching = [0.0]

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            launching[0] += time.perf_counter() - started

    runner.run = timed_run  # type: ignore[method-assign]
    try:
        with profile(activities=activities) as prof:
            timing = run_engine_batch(engine, [prompt], params, prefix=request_id)
    finally:
        del runner.run  # the instance attribute goes; the method shows through again
    figures = summarize(prof.events(), timing.steps, timing.seconds, 1)
    figures["request_ms"] = 1000 * timing.seconds
    figures["runner_host_ms"] = 1000 * launching[0]
    host = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_KERNELS]
    figures["top_host_ops"] = [
        {"name": e.key[:120], "calls": e.count, "self_us": e.self_cpu_time_total} for e in host
    ]
    return figures


def summarize(events: Any, steps: int, wall_s: float, batch: int) -> dict[str, Any]:
    """Per-step figures from the profiler's events."""
    from torch.autograd import DeviceType

    kernel_us: dict[str, float] = defaultdict(float)
    kernel_count: dict[str, int] = defaultdict(int)
    eager_ops = 0
    for event in events:
        if event.device_type == DeviceType.CUDA:
            kernel_us[event.name] += event.time_range.elapsed_us()
            kernel_count[event.name] += 1
        elif event.name.startswith("aten::"):
            parent = event.cpu_parent
            eager_ops += parent is None or not parent.name.startswith("aten::")  # called from Python
    device_us = sum(kernel_us.values())
    top = sorted(kernel_us, key=kernel_us.__getitem__, reverse=True)[:TOP_KERNELS]
    return {
        "batch": batch,
        "steps": steps,
        "step_ms": 1000 * wall_s / steps,
        "device_busy_ms_per_step": device_us / 1000 / steps,
        "device_busy_fraction": device_us / 1e6 / wall_s if wall_s > 0 else None,
        "kernels_per_step": sum(kernel_count.values()) / steps,
        "eager_torch_ops_per_step": eager_ops / steps,
        "top_kernels": [  # names cut: a cuBLAS kernel's can run to hundreds of characters
            {"name": name[:120], "per_step": kernel_count[name] / steps, "us_per_step": us / steps}
            for name, us in ((name, kernel_us[name]) for name in top)
        ],
    }


def describe(figures: dict[str, Any]) -> list[str]:
    """The profile as printed lines."""
    busy = figures["device_busy_fraction"]
    share = f" ({100 * busy:.0f}%)" if busy is not None else ""
    lines = [
        f"profile:  {figures['steps']} decode steps at batch {figures['batch']}: "
        f"{figures['step_ms']:.3f} ms a step under the profiler, device busy "
        f"{figures['device_busy_ms_per_step']:.3f} ms{share}, {figures['kernels_per_step']:.0f} kernels "
        f"and {figures['eager_torch_ops_per_step']:.0f} eager torch ops a step"
    ]
    for kernel in figures["top_kernels"]:
        lines.append(f"  {kernel['us_per_step']:9.1f} us  x{kernel['per_step']:<5.0f} {kernel['name'][:90]}")
    return lines
