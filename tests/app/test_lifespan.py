"""The lifespan owns an engine it builds, and leaves a given one alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import model_runtime
from app.main import create_app
from app.settings import Settings
from model_runtime import EngineConfig
from tests.app.fake_engine import FakeEngine


class FakeAsyncEngine(FakeEngine):
    """Stands in for model_runtime.AsyncEngine: FakeEngine plus start/shutdown."""

    instances: list[FakeAsyncEngine] = []

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(model_id=config.served_model_name)
        self.config = config
        self.events: list[str] = []
        FakeAsyncEngine.instances.append(self)

    async def start(self) -> None:
        self.events.append("start")

    async def shutdown(self) -> None:
        self.events.append("shutdown")


@pytest.fixture(autouse=True)
def fake_async_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeAsyncEngine.instances = []
    monkeypatch.setattr(model_runtime, "AsyncEngine", FakeAsyncEngine, raising=False)


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
