"""`atenea serve`: flags, their env vars, and what it hands to uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import app.main
import model_runtime
from app.cli import build_parser, main
from app.commands.serve import settings_from_args
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FLAGS = {
    "--host": "ATENEA_HOST",
    "--port": "ATENEA_PORT",
    "--model": "ATENEA_MODEL",
    "--served-model-name": "ATENEA_SERVED_MODEL_NAME",
    "--device": "ATENEA_DEVICE",
    "--dtype": "ATENEA_DTYPE",
    "--max-num-seqs": "ATENEA_MAX_NUM_SEQS",
    "--max-model-len": "ATENEA_MAX_MODEL_LEN",
    "--max-num-batched-tokens": "ATENEA_MAX_NUM_BATCHED_TOKENS",
    "--kv-cache-memory-gib": "ATENEA_KV_CACHE_MEMORY_GIB",
    "--gpu-memory-utilization": "ATENEA_GPU_MEMORY_UTILIZATION",
    "--enforce-eager": "ATENEA_ENFORCE_EAGER",
    "--overlap-steps": "ATENEA_OVERLAP_STEPS",
    "--engine-process": "ATENEA_ENGINE_PROCESS",
    "--image-model": "ATENEA_IMAGE_MODEL",
    "--image-max-batch-size": "ATENEA_IMAGE_MAX_BATCH_SIZE",
    "--image-cpu-threads": "ATENEA_IMAGE_CPU_THREADS",
    "--embedding-model": "ATENEA_EMBEDDING_MODEL",
    "--embedding-model-name": "ATENEA_EMBEDDING_MODEL_NAME",
    "--log-level": "ATENEA_LOG_LEVEL",
    "--log-format": "ATENEA_LOG_FORMAT",
    "--log-content": "ATENEA_LOG_CONTENT",
    "--api-key": "ATENEA_API_KEY",
    "--api-key-file": "ATENEA_API_KEY_FILE",
    "--allowed-origins": "ATENEA_ALLOWED_ORIGINS",
    "--max-request-body-bytes": "ATENEA_MAX_REQUEST_BODY_BYTES",
    "--max-queued-requests": "ATENEA_MAX_QUEUED_REQUESTS",
    "--max-queued-tokens": "ATENEA_MAX_QUEUED_TOKENS",
    "--request-timeout": "ATENEA_REQUEST_TIMEOUT",
    "--shutdown-timeout": "ATENEA_SHUTDOWN_TIMEOUT",
    "--engine-stall-timeout": "ATENEA_ENGINE_STALL_TIMEOUT",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ATENEA_"):
            monkeypatch.delenv(name)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATENEA_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_help_lists_every_flag_with_its_env_var() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    for flag, env in FLAGS.items():
        assert flag in help_text
        assert f"env: {env})" in help_text
    assert "(default: 8000; env: ATENEA_PORT)" in help_text
    assert "(default: smollm2-135m-instruct; env: ATENEA_MODEL)" in help_text
    # Every setting has a flag: nothing configurable only through the environment.
    assert {f"--{name.replace('_', '-')}" for name in Settings.model_fields} == set(FLAGS)


def test_env_vars_set_the_defaults_shown_in_help() -> None:
    result = run_cli("serve", "--help", env={"ATENEA_PORT": "9000", "ATENEA_DEVICE": "cpu"})
    help_text = " ".join(result.stdout.split())
    assert "(default: 9000; env: ATENEA_PORT)" in help_text
    assert "(default: cpu; env: ATENEA_DEVICE)" in help_text


def test_env_vars_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATENEA_PORT", "9000")
    monkeypatch.setenv("ATENEA_MAX_MODEL_LEN", "2048")
    monkeypatch.setenv("ATENEA_KV_CACHE_MEMORY_GIB", "1.5")
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert (settings.port, settings.max_model_len, settings.kv_cache_memory_gib) == (9000, 2048, 1.5)
    settings = settings_from_args(
        build_parser().parse_args(["serve", "--port", "7000", "--dtype", "bfloat16"])
    )
    assert (settings.port, settings.dtype, settings.max_model_len) == (7000, "bfloat16", 2048)


def test_defaults_without_env() -> None:
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings == Settings()
    assert (settings.host, settings.port, settings.model) == ("127.0.0.1", 8000, "smollm2-135m-instruct")
    limits = (settings.max_num_seqs, settings.max_num_batched_tokens, settings.max_model_len)
    assert limits == (64, None, None)


def test_bad_env_var_is_reported_not_a_traceback() -> None:
    result = run_cli("serve", "--help", env={"ATENEA_PORT": "eighty"})
    assert result.returncode == 2
    assert "ATENEA_" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["serve", "--device", "tpu"], ["serve", "--port", "x"]])
def test_bad_flag_is_a_usage_error(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(args)
    assert exit_info.value.code == 2


@dataclass(frozen=True)
class FakeResolved:
    path: Path
    served_name: str


def test_serve_builds_the_engine_config_and_runs_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resolved: list[str] = []
    created: dict[str, Any] = {}
    ran: dict[str, Any] = {}

    def resolve_model(name: str) -> FakeResolved:
        resolved.append(name)
        return FakeResolved(tmp_path, "resolved-name")

    def create_app(settings: Settings, engine_config: model_runtime.EngineConfig) -> str:
        created.update(settings=settings, engine_config=engine_config)
        return "the-app"

    def serve(app: object, host: str, port: int, log_level: str) -> int:
        ran.update(app=app, host=host, port=port, log_level=log_level)
        return 0

    monkeypatch.setattr(model_runtime, "resolve_model", resolve_model, raising=False)
    monkeypatch.setattr(app.main, "create_app", create_app)
    monkeypatch.setattr("app.server.serve", serve)
    monkeypatch.setenv("ATENEA_MAX_NUM_SEQS", "8")

    assert (
        main(["serve", "--port", "1234", "--model", "tiny", "--device", "cpu", "--log-level", "warning"]) == 0
    )
    assert resolved == ["tiny"]
    config = created["engine_config"]
    assert config == model_runtime.EngineConfig(
        model_path=tmp_path,
        served_model_name="resolved-name",
        device="cpu",
        dtype="auto",
        max_num_seqs=8,
        max_model_len=None,
        max_num_batched_tokens=None,
        kv_cache_memory_gib=None,
    )
    assert ran == {"app": "the-app", "host": "127.0.0.1", "port": 1234, "log_level": "warning"}

    main(["serve", "--served-model-name", "my-model"])
    assert created["engine_config"].served_model_name == "my-model"


def test_embedding_model_flags_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert settings_from_args(build_parser().parse_args(["serve"])).embedding_model is None
    monkeypatch.setenv("ATENEA_EMBEDDING_MODEL", "/models/bge-small")
    settings = settings_from_args(build_parser().parse_args(["serve", "--embedding-model-name", "bge"]))
    assert (settings.embedding_model, settings.embedding_model_name) == ("/models/bge-small", "bge")

    monkeypatch.setattr(
        model_runtime, "resolve_model", lambda name: FakeResolved(tmp_path, "tiny"), raising=False
    )
    monkeypatch.setattr(
        app.main, "create_app", lambda *a, **k: pytest.fail("a bad folder got as far as the app")
    )
    with pytest.raises(SystemExit, match="cannot serve embedding model .*missing.*not a folder"):
        main(["serve", "--embedding-model", str(tmp_path / "missing")])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SystemExit, match="pickle format are refused"):
        main(["serve", "--embedding-model", str(tmp_path)])


def test_invalid_value_for_serve_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="invalid option"):
        main(["serve", "--port", "-5"])


def test_unservable_model_exits_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve_model(name: str) -> FakeResolved:
        raise ValueError("not a model folder")

    monkeypatch.setattr(model_runtime, "resolve_model", resolve_model, raising=False)
    with pytest.raises(SystemExit, match="cannot serve model 'nope': not a model folder"):
        main(["serve", "--model", "nope"])


def test_api_keys_come_from_repeated_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--api-key", "k1", "--api-key", "k2", "--allowed-origins", "https://a"]
    )
    settings = settings_from_args(args)
    assert settings.api_key == ["k1", "k2"]
    assert settings.allowed_origins == ["https://a"]
    monkeypatch.setenv("ATENEA_API_KEY", "from-env")
    assert settings_from_args(build_parser().parse_args(["serve"])).api_key == ["from-env"]
    # The command line replaces the environment's keys rather than adding to them.
    assert settings_from_args(build_parser().parse_args(["serve", "--api-key", "k3"])).api_key == ["k3"]


def test_help_never_prints_an_api_key() -> None:
    result = run_cli("serve", "--help", env={"ATENEA_API_KEY": "sk-very-secret"})
    assert result.returncode == 0, result.stderr
    assert "sk-very-secret" not in result.stdout
    assert "set, hidden" in " ".join(result.stdout.split())


def test_unreadable_key_file_exits_with_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(
        model_runtime, "resolve_model", lambda name: FakeResolved(tmp_path, "m"), raising=False
    )
    with pytest.raises(SystemExit, match="missing-keys"):
        main(["serve", "--api-key-file", str(tmp_path / "missing-keys")])
    empty = tmp_path / "empty-keys"
    empty.write_text("# no key here\n\n")
    with pytest.raises(SystemExit, match="holds no key"):
        main(["serve", "--api-key-file", str(empty)])
