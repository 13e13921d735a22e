"""How much GPU memory an image model needs at its peak, beyond its weights.

The text engine sizes its KV cache from the device's free memory. When the image pipeline shares
the GPU, it loads first (its weights are then already taken) and this peak is kept out of the KV
budget, so the largest batch the worker runs still fits next to a full cache.
"""

from __future__ import annotations

from model_runtime.images.pipeline import DiffusersImageModel

WARM_UP_PROMPT = "a red circle on a blue background"


def peak_device_bytes(model: DiffusersImageModel, images: int) -> int:
    """The activation peak of one pipeline call of `images` images at the model's largest size,
    measured by running it once (one step: activations do not grow with the step count). 0 on a
    CPU, where nothing runs. Blocking; call it on the thread that runs the model."""
    if model.device.type != "cuda":
        return 0
    import torch

    largest = max(model.info.sizes, key=lambda s: s.width * s.height)
    torch.cuda.synchronize(model.device)
    before = torch.cuda.memory_allocated(model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    try:
        model.generate(
            [WARM_UP_PROMPT] * images, [""] * images, largest, 1, list(range(images)), lambda: False
        )
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeError(
            f"the image model runs out of GPU memory on a batch of {images} images of {largest}; "
            "lower --image-max-batch-size"
        ) from exc
    torch.cuda.synchronize(model.device)
    peak = torch.cuda.max_memory_allocated(model.device) - before
    torch.cuda.empty_cache()
    return max(0, peak)
