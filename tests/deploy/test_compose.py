"""docker-compose.yml against the Compose specification's JSON schema (shipped by check-jsonschema,
offline), and the wiring users rely on: GPU reservation, CPU profile, Prometheus, Grafana, API key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the `<<: *atenea` merges as Compose does


def test_compose_file_matches_the_compose_spec() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path, compose: dict[str, Any]) -> None:
    compose["services"]["atenea-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["gpu"] = True
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    result = check_compose_schema(broken)
    assert result.returncode != 0 and "gpu" in result.stdout


def test_gpu_and_cpu_profiles(compose: dict[str, Any]) -> None:
    gpu, cpu = compose["services"]["atenea-gpu"], compose["services"]["atenea-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in cpu
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and cpu["build"]["args"]["VARIANT"] == "cpu"
    for service in (gpu, cpu):
        assert service["environment"]["ATENEA_HOST"] == "0.0.0.0"
        assert service["networks"]["default"]["aliases"] == ["atenea"]
        assert service["env_file"] == "./deploy/atenea.env"
        # Docker's SIGKILL must not cut the drain short.
        assert float(service["stop_grace_period"].removesuffix("s")) > Settings().shutdown_timeout


def test_api_key_comes_from_the_env_file(compose: dict[str, Any]) -> None:
    example = (DEPLOY / "atenea.env.example").read_text()
    assert re.search(r"^ATENEA_API_KEY=\S+", example, re.MULTILINE)
    assert compose["services"]["prometheus"]["env_file"] == "./deploy/atenea.env"
    assert Settings.model_config["env_prefix"] == "ATENEA_" and "api_key" in Settings.model_fields


def test_prometheus_scrapes_atenea_metrics_with_the_key(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["atenea:8000"]
    credentials = job["authorization"]["credentials_file"]
    entrypoint = " ".join(compose["services"]["prometheus"]["entrypoint"])
    assert f"> {credentials}" in entrypoint
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "atenea.json").read_text())


def test_grafana_provisions_the_dashboard_and_datasource(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/atenea.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]


def test_dashboard_shows_throughput_ttft_queue_depth_and_kv_usage() -> None:
    titles = {panel["title"] for panel in dashboard()["panels"]}
    assert {"Throughput", "Time to first token", "Queue depth", "KV cache usage"} <= titles


def dashboard_metric_names() -> set[str]:
    names: set[str] = set()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\b(atenea_[a-z0-9_]+)", target["expr"]))
    return names


@pytest.fixture
def client_metrics_text() -> str:
    """/metrics of the real app (engine faked) after a chat request, so labelled series exist too."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.fake_engine import FakeEngine

    with TestClient(create_app(Settings(), engine=FakeEngine())) as client:
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


def test_every_dashboard_metric_is_exported_by_the_server(client_metrics_text: str) -> None:
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in client_metrics_text.splitlines()
        if line and not line.startswith("#")
    }
    queried = dashboard_metric_names()
    assert {
        "atenea_generation_tokens_total",
        "atenea_time_to_first_token_seconds_bucket",
        "atenea_num_requests_waiting",
        "atenea_kv_blocks_used",
    } <= queried
    # The Kubernetes autoscaler's queue depth comes from the same gauge.
    assert "atenea_num_requests_waiting" in exported
    missing = {name for name in queried if name not in exported}
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"
