"""Weights load only from safetensors (and GGUF, converted to safetensors): a folder that holds only
pickle checkpoints is refused without unpickling anything, and a `.bin`/`.pt` file is not a model."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from model_runtime.models.fetch import resolve_model
from model_runtime.models.loader import load_model


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (RuntimeError, ("a pickle was executed",))


@pytest.fixture
def pickle_only_folder(tiny_model_path: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_path, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    (folder / "model.pt").write_bytes(pickle.dumps(_Boom()))
    return folder


def test_pickle_checkpoints_are_refused_unread(
    pickle_only_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_torch_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    monkeypatch.setattr(pickle, "load", no_torch_load)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        load_model(pickle_only_folder, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pkl"])
def test_a_pickle_file_is_not_a_model(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match="neither a model folder"):
        resolve_model(str(path), home=tmp_path / "home")
