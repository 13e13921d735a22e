"""Finding and loading image models: a diffusers folder, the built-in model, and what is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_runtime.images import DEFAULT_IMAGE_MODEL, ImageSize, load_image_model, resolve_image_model
from model_runtime.images.loader import BUILTIN_DIR
from tests.model_runtime.images.tiny_pipeline import build_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "tiny-sd")


def test_a_diffusers_folder_loads_and_draws_each_image_from_its_seed(tiny_pipeline: Path) -> None:
    resolved = resolve_image_model(str(tiny_pipeline))
    assert resolved.served_name == "tiny-sd"
    model = load_image_model(resolved, device="cpu")
    # No metadata file: the UNet's sample size times the VAE's scale factor (8 * 2).
    assert model.info.sizes == (ImageSize(16, 16),)
    size = model.info.default_size
    batch = model.generate(["a red circle", "a blue square"], ["", ""], size, 2, [1, 2], lambda: False)
    assert batch is not None and [img.shape for img in batch] == [(16, 16, 3)] * 2
    assert all(img.dtype == np.uint8 for img in batch)
    alone = model.generate(["a blue square"], [""], size, 2, [2], lambda: False)
    assert alone is not None
    # The second image depends on its own seed, not on its place in the batch.
    assert np.abs(alone[0].astype(int) - batch[1].astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])


def test_a_run_stops_between_steps_when_asked(tiny_pipeline: Path) -> None:
    model = load_image_model(resolve_image_model(str(tiny_pipeline)), device="cpu")
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return True

    assert model.generate(["a"], [""], ImageSize(16, 16), 5, [0], should_stop) is None
    assert len(calls) == 1  # asked after the first step, and the rest were skipped


def test_metadata_declares_sizes_and_defaults(tiny_pipeline: Path, tmp_path: Path) -> None:
    folder = tmp_path / "declared"
    shutil.copytree(tiny_pipeline, folder)
    (folder / "atenea_image.json").write_text(
        json.dumps({"sizes": ["16x16", "32x32"], "default_steps": 3, "guidance_scale": 2.0})
    )
    model = load_image_model(resolve_image_model(str(folder)), device="cpu")
    assert model.info.sizes == (ImageSize(16, 16), ImageSize(32, 32))
    assert model.info.default_steps == 3 and model.guidance_scale == 2.0


def test_the_builtin_model_is_found_by_name() -> None:
    resolved = resolve_image_model(DEFAULT_IMAGE_MODEL)
    assert resolved.path == BUILTIN_DIR / DEFAULT_IMAGE_MODEL
    assert (resolved.path / "model_index.json").is_file()
    # Small enough to live in the repository.
    assert sum(f.stat().st_size for f in resolved.path.rglob("*") if f.is_file()) < 20 * 2**20


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"model{suffix}"
    file.write_bytes(b"not opened")
    with pytest.raises(ValueError, match="pickle"):
        resolve_image_model(str(file))


def test_a_folder_with_pickle_only_weights_is_refused(tiny_pipeline: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match="pickle"):
        load_image_model(resolve_image_model(str(folder)), device="cpu")


def test_paths_that_are_not_pipelines_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a built-in image model"):
        resolve_image_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="model_index.json"):
        resolve_image_model(str(tmp_path))
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=".safetensors"):
        resolve_image_model(str(tmp_path / "weights.gguf"))


def test_a_single_file_without_its_configs_is_explained(tiny_pipeline: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    # A file of weights whose pipeline configuration is neither beside it nor cached: the error
    # says what to provide instead of reaching for the network.
    file = tmp_path / "model.safetensors"
    save_file(load_file(tiny_pipeline / "unet" / "diffusion_pytorch_model.safetensors"), file)
    with pytest.raises(ValueError, match="diffusers configs|diffusers folder"):
        load_image_model(resolve_image_model(str(file)), device="cpu")
