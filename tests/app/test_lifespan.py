"""The lifespan owns an engine it builds, and leaves a given one alone."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import model_runtime
from app import main as app_main
from app.embedding_runtime import encoder_first
from app.image_runtime import images_first
from app.main import create_app
from app.settings import Settings
from model_runtime import EngineConfig
from tests.app.fake_engine import FakeEngine


class FakeAsyncEngine(FakeEngine):
    """Stands in for the engine `model_runtime.engine_for` builds: FakeEngine plus start/shutdown."""

    instances: list[FakeAsyncEngine] = []

    def __init__(self, config: EngineConfig, own_process: bool | None) -> None:
        super().__init__(model_id=config.served_model_name)
        self.config = config
        self.own_process = own_process
        self.events: list[str] = []
        FakeAsyncEngine.instances.append(self)

    async def start(self) -> None:
        self.events.append("start")

    async def shutdown(self) -> None:
        self.events.append("shutdown")


@pytest.fixture(autouse=True)
def fake_async_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeAsyncEngine.instances = []
    monkeypatch.setattr(model_runtime, "engine_for", FakeAsyncEngine, raising=False)


async def test_lifespan_starts_and_stops_the_engine(tmp_path: Path) -> None:
    config = EngineConfig(model_path=tmp_path, served_model_name="served")
    app = create_app(Settings(), engine_config=config)
    assert app.state.engine is None
    async with app.router.lifespan_context(app):
        (engine,) = FakeAsyncEngine.instances
        assert engine.config is config and engine.events == ["start"]
        assert app.state.engine is engine
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/v1/models")
            assert response.json()["data"][0]["id"] == "served"
    assert engine.events == ["start", "shutdown"]
    assert app.state.engine is None


@dataclass(frozen=True)
class FakeResolved:
    path: Path
    served_name: str


async def test_lifespan_resolves_the_model_from_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        model_runtime, "resolve_model", lambda name: FakeResolved(tmp_path / name, name), raising=False
    )
    app = create_app(Settings(model="tiny-llama", max_num_seqs=4))
    async with app.router.lifespan_context(app):
        (engine,) = FakeAsyncEngine.instances
        assert engine.config.model_path == tmp_path / "tiny-llama"
        assert (engine.config.served_model_name, engine.config.max_num_seqs) == ("tiny-llama", 4)
        assert engine.own_process is None  # unset: decided by the device


async def test_engine_process_setting_reaches_the_engine(tmp_path: Path) -> None:
    config = EngineConfig(model_path=tmp_path, served_model_name="served")
    for own_process in (True, False):
        app = create_app(Settings(engine_process=own_process), engine_config=config)
        async with app.router.lifespan_context(app):
            assert FakeAsyncEngine.instances[-1].own_process is own_process


async def test_given_engine_is_neither_started_nor_stopped() -> None:
    engine = FakeEngine()
    app = create_app(Settings(), engine=engine)
    async with app.router.lifespan_context(app):
        assert app.state.engine is engine
    assert app.state.engine is engine
    assert FakeAsyncEngine.instances == []


async def test_failed_start_shuts_down_and_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def failing_start(self: FakeAsyncEngine) -> None:
        raise RuntimeError("no weights")

    monkeypatch.setattr(FakeAsyncEngine, "start", failing_start)
    app = create_app(Settings(), engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    with pytest.raises(RuntimeError, match="no weights"):
        async with app.router.lifespan_context(app):
            pass
    assert FakeAsyncEngine.instances[0].events == ["shutdown"]


class FakeImageWorker:
    """Stands in for a started AsyncImageWorker: a reservation and a shared record of events."""

    def __init__(self, events: list[str], reserved: int) -> None:
        self.events = events
        self.reserved_device_bytes = reserved
        self.models: list[object] = []

    async def shutdown(self) -> None:
        self.events.append("images shutdown")


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One record of the engine's and the image worker's starts and shutdowns, in order."""
    log: list[str] = []

    async def start(self: FakeAsyncEngine) -> None:
        log.append(f"engine start (reserved {self.config.reserved_gpu_memory_bytes})")

    async def shutdown(self: FakeAsyncEngine) -> None:
        log.append("engine shutdown")

    monkeypatch.setattr(FakeAsyncEngine, "start", start)
    monkeypatch.setattr(FakeAsyncEngine, "shutdown", shutdown)
    return log


def fake_image_start(events: list[str], reserved: int = 0, fail: bool = False):  # type: ignore[no-untyped-def]
    async def start_image_worker(settings: Settings) -> FakeImageWorker:
        events.append("images start")
        if fail:
            raise RuntimeError("no pipeline")
        return FakeImageWorker(events, reserved)

    return start_image_worker


# What shares the engine's GPU starts first: the image pipeline and the embedding model alike.
@pytest.mark.parametrize(
    ("starts_first", "field", "model", "absent"),
    [
        (images_first, "image_model", "atenea-shapes", "none"),
        (encoder_first, "embedding_model", "/models/bert", None),
    ],
)
@pytest.mark.parametrize(
    ("device", "present", "cuda_available", "first"),
    [
        ("cpu", True, True, False),
        ("cuda", True, False, True),
        ("auto", True, True, True),
        ("auto", True, False, False),
        ("cuda", False, True, False),
    ],
)
def test_a_model_starts_before_the_engine_only_when_it_shares_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
    starts_first,  # type: ignore[no-untyped-def]
    field: str,
    model: str,
    absent: str | None,
    device: str,
    present: bool,
    cuda_available: bool,
    first: bool,
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    settings = Settings(device=device, **{field: model if present else absent})  # type: ignore[arg-type]
    assert starts_first(settings) is first


async def test_on_a_gpu_the_engine_starts_after_the_images_and_keeps_their_peak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, reserved=3 * 2**30))
    config = EngineConfig(model_path=tmp_path, served_model_name="x", reserved_gpu_memory_bytes=5)
    app = create_app(Settings(device="cuda"), engine_config=config)
    async with app.router.lifespan_context(app):
        assert app.state.images.reserved_device_bytes == 3 * 2**30
    assert events == [
        "images start",
        f"engine start (reserved {3 * 2**30 + 5})",
        "images shutdown",
        "engine shutdown",
    ]


async def test_on_a_cpu_the_engine_starts_first_and_reserves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, reserved=7))
    app = create_app(
        Settings(device="cpu"), engine_config=EngineConfig(model_path=tmp_path, served_model_name="x")
    )
    async with app.router.lifespan_context(app):
        pass
    assert events[:2] == ["engine start (reserved 0)", "images start"]


async def test_on_a_gpu_a_failed_image_start_never_starts_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, fail=True))
    app = create_app(
        Settings(device="cuda"), engine_config=EngineConfig(model_path=tmp_path, served_model_name="x")
    )
    with pytest.raises(RuntimeError, match="no pipeline"):
        async with app.router.lifespan_context(app):
            pass
    assert events == ["images start"]
    assert FakeAsyncEngine.instances == []


def fail_engine_start(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """The engine's start records itself, then fails as a KV budget that is too small does."""

    async def failing_start(self: FakeAsyncEngine) -> None:
        events.append("engine start")
        raise RuntimeError("KV budget too small")

    monkeypatch.setattr(FakeAsyncEngine, "start", failing_start)


async def test_on_a_gpu_a_failed_engine_start_shuts_the_images_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    fail_engine_start(monkeypatch, events)
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, reserved=1))
    app = create_app(
        Settings(device="cuda"), engine_config=EngineConfig(model_path=tmp_path, served_model_name="x")
    )
    with pytest.raises(RuntimeError, match="too small"):
        async with app.router.lifespan_context(app):
            pass
    assert events == ["images start", "engine start", "engine shutdown", "images shutdown"]


async def test_on_a_cpu_a_failed_image_start_shuts_the_engine_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, fail=True))
    app = create_app(
        Settings(device="cpu"), engine_config=EngineConfig(model_path=tmp_path, served_model_name="x")
    )
    with pytest.raises(RuntimeError, match="no pipeline"):
        async with app.router.lifespan_context(app):
            pass
    assert events == ["engine start (reserved 0)", "images start", "engine shutdown"]


class FakeEncoder:
    """Stands in for a started AsyncEncoder, sharing the record of events."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def shutdown(self) -> None:
        self.events.append("encoder shutdown")


def fake_encoder_start(events: list[str], fail: bool = False):  # type: ignore[no-untyped-def]
    async def start_encoder(settings: Settings, taken: Collection[str] = ()) -> FakeEncoder | None:
        if settings.embedding_model is None:
            return None
        events.append(f"encoder start (taken {list(taken)})")
        if fail:
            raise RuntimeError("no encoder weights")
        return FakeEncoder(events)

    return start_encoder


async def test_on_a_gpu_the_images_and_the_encoder_start_before_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, reserved=4))
    monkeypatch.setattr(app_main, "start_encoder", fake_encoder_start(events))
    settings = Settings(device="cuda", embedding_model=str(tmp_path))
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    async with app.router.lifespan_context(app):
        assert isinstance(app.state.encoder, FakeEncoder)
    assert events == [
        "images start",
        "encoder start (taken ['x'])",
        "engine start (reserved 4)",
        "encoder shutdown",
        "images shutdown",
        "engine shutdown",
    ]


async def test_on_a_gpu_without_images_the_encoder_starts_before_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_encoder", fake_encoder_start(events))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    settings = Settings(device="auto", image_model="none", embedding_model=str(tmp_path))
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    async with app.router.lifespan_context(app):
        pass
    assert events[:2] == ["encoder start (taken ['x'])", "engine start (reserved 0)"]


async def test_on_a_cpu_the_encoder_starts_last(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events))
    monkeypatch.setattr(app_main, "start_encoder", fake_encoder_start(events))
    settings = Settings(device="cpu", embedding_model=str(tmp_path))
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    async with app.router.lifespan_context(app):
        pass
    assert events[:3] == ["engine start (reserved 0)", "images start", "encoder start (taken ['x'])"]


async def test_on_a_gpu_a_failed_engine_start_shuts_the_encoder_and_images_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    fail_engine_start(monkeypatch, events)
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, reserved=1))
    monkeypatch.setattr(app_main, "start_encoder", fake_encoder_start(events))
    settings = Settings(device="cuda", embedding_model=str(tmp_path))
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    with pytest.raises(RuntimeError, match="too small"):
        async with app.router.lifespan_context(app):
            pass
    assert events == [
        "images start",
        "encoder start (taken ['x'])",
        "engine start",
        "engine shutdown",
        "encoder shutdown",
        "images shutdown",
    ]
    assert app.state.encoder is None


async def test_on_a_gpu_a_failed_encoder_start_never_starts_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events))
    monkeypatch.setattr(app_main, "start_encoder", fake_encoder_start(events, fail=True))
    settings = Settings(device="cuda", embedding_model=str(tmp_path))
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    with pytest.raises(RuntimeError, match="no encoder weights"):
        async with app.router.lifespan_context(app):
            pass
    assert events == ["images start", "encoder start (taken ['x'])", "images shutdown"]
    assert FakeAsyncEngine.instances == []


async def test_on_a_gpu_a_failed_image_start_leaves_the_encoder_unstarted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, events: list[str]
) -> None:
    monkeypatch.setattr(app_main, "start_image_worker", fake_image_start(events, fail=True))
    monkeypatch.setattr(app_main, "start_encoder", fake_encoder_start(events))
    settings = Settings(device="cuda", embedding_model=str(tmp_path))
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    with pytest.raises(RuntimeError, match="no pipeline"):
        async with app.router.lifespan_context(app):
            pass
    assert events == ["images start"]


async def test_on_a_gpu_the_id_clash_is_caught_before_the_engine_starts(
    tmp_path: Path, events: list[str]
) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    settings = Settings(
        device="cuda", image_model="none", embedding_model=str(folder), embedding_model_name="x"
    )
    app = create_app(settings, engine_config=EngineConfig(model_path=tmp_path, served_model_name="x"))
    with pytest.raises(ValueError, match="already another served model's"):
        async with app.router.lifespan_context(app):
            pass
    assert events == []
    assert FakeAsyncEngine.instances == []
