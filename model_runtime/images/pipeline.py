"""One loaded image model behind a small interface the worker drives: a batch of prompts in, arrays out.

`DiffusersImageModel` wraps a diffusers text-to-image pipeline (Stable Diffusion 1.x/2.x, SDXL, the
built-in model, ...). Tests of the worker use lighter models behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from model_runtime.images.api import ImageModelInfo, ImageSize

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline


class ImageModel(Protocol):
    info: ImageModelInfo

    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        size: ImageSize,
        steps: int,
        seeds: Sequence[int],
        should_stop: Callable[[], bool],
    ) -> list[np.ndarray] | None:
        """One image per prompt ([H, W, 3] uint8), image i drawn from seeds[i]; None when
        `should_stop()` turned true between steps and the run was abandoned."""
        ...


class DiffusersImageModel:
    def __init__(
        self,
        pipeline: DiffusionPipeline,
        info: ImageModelInfo,
        device: torch.device,
        guidance_scale: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.info = info
        self.device = device
        self.guidance_scale = guidance_scale  # None: the pipeline's own default

    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        size: ImageSize,
        steps: int,
        seeds: Sequence[int],
        should_stop: Callable[[], bool],
    ) -> list[np.ndarray] | None:
        import torch

        # One generator per image: each image's noise depends on its own seed only, so an image is
        # the same whether it ran alone or in a batch (up to the batch's arithmetic).
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        stopped = False

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            nonlocal stopped
            if should_stop():
                stopped = True
                pipe._interrupt = True  # diffusers' own flag: the remaining steps are skipped
            return tensors

        kwargs: dict[str, Any] = {}
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        if any(negative_prompts):
            kwargs["negative_prompt"] = list(negative_prompts)
        with torch.inference_mode():
            out = self.pipeline(
                prompt=list(prompts),
                height=size.height,
                width=size.width,
                num_inference_steps=steps,
                generator=generators,
                output_type="np",
                callback_on_step_end=on_step_end,
                **kwargs,
            )
        if stopped:
            return None
        images: np.ndarray = out.images  # [B, H, W, 3] floats in [0, 1]
        return [(img * 255).round().clip(0, 255).astype(np.uint8) for img in images]
