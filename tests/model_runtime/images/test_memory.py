"""The image model's GPU peak: measured by a warm-up run on CUDA, nothing run (and 0) on a CPU.
The CUDA measurement itself is in tests/gpu."""

from __future__ import annotations

import pytest

from model_runtime.images import ImageModelInfo, ImageSize, peak_device_bytes, runs_on_cuda
from model_runtime.images.pipeline import DiffusersImageModel


class UncallablePipeline:
    def __call__(self, **kwargs: object) -> None:
        raise AssertionError("a CPU model must not run a warm-up generation")


def test_on_a_cpu_the_peak_is_zero_and_nothing_runs() -> None:
    import torch

    info = ImageModelInfo("m", (ImageSize(16, 16), ImageSize(64, 64)), 4, 50, 0)
    model = DiffusersImageModel(UncallablePipeline(), info, torch.device("cpu"))  # type: ignore[arg-type]
    assert peak_device_bytes(model, 16) == 0


@pytest.mark.parametrize(
    ("device", "cuda_available", "expected"),
    [
        ("cpu", True, False),
        ("cpu", False, False),
        ("cuda", False, True),
        ("cuda", True, True),
        ("auto", True, True),
        ("auto", False, False),
    ],
)
def test_where_the_image_model_runs(
    monkeypatch: pytest.MonkeyPatch, device: str, cuda_available: bool, expected: bool
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert runs_on_cuda(device) is expected
