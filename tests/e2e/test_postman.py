"""The Postman collection in deploy/postman, run by newman (npm) against real servers: every request's
own tests (status and shape) must pass. The JSON reports land in artifacts/postman/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.conftest import API_KEY, Server

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTMAN = REPO_ROOT / "deploy" / "postman"
COLLECTION = POSTMAN / "atenea.postman_collection.json"
ENVIRONMENT = POSTMAN / "atenea.postman_environment.json"
NEWMAN = REPO_ROOT / "tests" / "node" / "node_modules" / ".bin" / "newman"
REPORTS = REPO_ROOT / "artifacts" / "postman"


def newman(server: Server, report: str, *args: str, api_key: str = "") -> dict[str, Any]:
    assert NEWMAN.exists(), "newman is missing: `make test` installs it (tests/node)"
    REPORTS.mkdir(parents=True, exist_ok=True)
    report_path = REPORTS / f"{report}.json"
    result = subprocess.run(
        [str(NEWMAN), "run", str(COLLECTION), "--environment", str(ENVIRONMENT),
         "--env-var", f"baseUrl={server.base_url}", "--env-var", f"apiKey={api_key}",
         "--reporters", "cli,json", "--reporter-json-export", str(report_path),
         "--timeout-request", "300000", "--color", "off", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    run: dict[str, Any] = json.loads(report_path.read_text())["run"]
    assert run["failures"] == []
    return run


def request_names(run: dict[str, Any]) -> list[str]:
    # The collection's pre-request look-up of a model is recorded under the item it ran before.
    return list(dict.fromkeys(execution["item"]["name"] for execution in run["executions"]))


def collection_folders() -> dict[str, list[str]]:
    collection = json.loads(COLLECTION.read_text())
    return {folder["name"]: [item["name"] for item in folder["item"]] for folder in collection["item"]}


def test_collection_covers_what_users_call() -> None:
    folders = collection_folders()
    assert set(folders) == {"Models", "Chat", "Completions", "Images", "Errors", "Auth"}
    assert "Chat completion, streamed" in folders["Chat"]
    assert {"Image generation, b64_json", "Image generation, url"} <= set(folders["Images"])
    collection = json.loads(COLLECTION.read_text())
    assert collection["auth"]["bearer"][0]["value"] == "{{apiKey}}"
    environment = {v["key"] for v in json.loads(ENVIRONMENT.read_text())["values"]}
    assert environment == {"baseUrl", "apiKey"}
    for folder in collection["item"]:
        for item in folder["item"]:  # every request has tests, and they check the status
            script = "\n".join(item["event"][0]["script"]["exec"])
            assert "pm.response.to.have.status(" in script, item["name"]


def test_collection_with_an_api_key(keyed_server: Server) -> None:
    run = newman(keyed_server, "with-api-key", api_key=API_KEY)  # the whole collection
    assert request_names(run) == [name for names in collection_folders().values() for name in names]
    stats = run["stats"]
    assert stats["assertions"]["failed"] == 0 and stats["assertions"]["total"] >= 35


def test_collection_without_a_key_on_an_open_server(server: Server) -> None:
    chosen = ["Models", "Errors", "Auth"]
    run = newman(server, "without-api-key", *[arg for name in chosen for arg in ("--folder", name)])
    assert request_names(run) == [name for folder in chosen for name in collection_folders()[folder]]
