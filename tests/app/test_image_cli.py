"""`--image-model` / ATENEA_IMAGE_MODEL on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.commands.serve import settings_from_args
from app.image_runtime import images_enabled, resolved_image_model


def test_the_builtin_image_model_is_the_default() -> None:
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    resolved = resolved_image_model(settings)
    assert resolved is not None and resolved.served_name == "atenea-shapes"


def test_image_model_from_flag_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    settings = settings_from_args(build_parser().parse_args(["serve", "--image-model", str(tmp_path)]))
    resolved = resolved_image_model(settings)
    assert resolved is not None and resolved.path == tmp_path.resolve()
    monkeypatch.setenv("ATENEA_IMAGE_MODEL", "none")
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert not images_enabled(settings) and resolved_image_model(settings) is None


def test_serve_refuses_a_pickle_image_model_before_loading(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"never unpickled")
    with pytest.raises(SystemExit, match="pickle"):
        main(["serve", "--image-model", str(checkpoint)])
