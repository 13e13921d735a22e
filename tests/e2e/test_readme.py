"""The README's quick-start examples, run as written against a live server (only the address is
changed to the test server's). Each example is the fenced block after `<!-- example: NAME -->`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings
from tests.e2e.conftest import MODEL, Server

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
NODE_DIR = REPO_ROOT / "tests" / "node"
README_ADDRESS = "http://127.0.0.1:8000"


def examples() -> dict[str, str]:
    pattern = re.compile(r"<!-- example: (\w+) -->\n```\w*\n(.*?)\n```", re.DOTALL)
    return dict(pattern.findall(README.read_text()))


def example(name: str, server: Server) -> str:
    return examples()[name].replace(README_ADDRESS, server.base_url)


def run(command: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATENEA_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `atenea`, as installed
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_every_example_is_here() -> None:
    assert set(examples()) == {"curl", "python", "node", "postman", "cli", "docker"}


def test_curl(server: Server, client) -> None:
    result = run(["bash", "-c", example("curl", server)])
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["object"] == "chat.completion"
    expected = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
    )
    assert answer["choices"][0]["message"]["content"] == expected.choices[0].message.content


def test_python_sdk(server: Server) -> None:
    result = run([sys.executable, "-c", example("python", server)])
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 10  # a streamed story, printed piece by piece


def test_node_sdk(server: Server) -> None:
    assert (NODE_DIR / "node_modules" / "openai").exists(), "`make test` installs the Node SDK (tests/node)"
    script = NODE_DIR / "readme-example.generated.mjs"  # beside node_modules, so `import "openai"` resolves
    script.write_text(example("node", server))
    try:
        result = run(["node", str(script)], cwd=NODE_DIR)
    finally:
        script.unlink()
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 10


def test_postman_with_newman(server: Server) -> None:
    newman = NODE_DIR / "node_modules" / ".bin" / "newman"
    assert newman.exists(), "`make test` installs newman (tests/node)"
    command = example("postman", server).replace("npx newman", shlex.quote(str(newman)))
    result = run(["bash", "-c", command + " --color off"])
    assert result.returncode == 0, result.stdout[-6000:]
    assert re.search(r"assertions\s*│\s*\d+\s*│\s*0\s*│", result.stdout)  # none failed


def test_cli(server: Server) -> None:
    result = run(["bash", "-c", "set -e\n" + example("cli", server)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[0] == MODEL
    assert len(lines) >= 3 and all(line.strip() for line in lines[1:3])


def test_docker_example_matches_the_image() -> None:
    """No Docker engine runs here: check that the commands ask for what the Dockerfile provides."""
    build, run_line = (shlex.split(line) for line in examples()["docker"].splitlines())
    assert build[:2] == ["docker", "build"] and build[-1] == "."
    variant = build[build.index("--build-arg") + 1].removeprefix("VARIANT=")
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"{variant}) pip install" in dockerfile
    tag = build[build.index("-t") + 1]
    assert run_line[:2] == ["docker", "run"] and run_line[-1] == tag
    assert run_line[run_line.index("-p") + 1] == "8000:8000" and "EXPOSE 8000" in dockerfile
    variable = run_line[run_line.index("-e") + 1].split("=")[0]
    assert variable.removeprefix("ATENEA_").lower() in Settings.model_fields


@pytest.mark.parametrize("name", ["curl", "python", "node", "postman", "cli"])
def test_examples_name_the_default_address(name: str) -> None:
    assert README_ADDRESS in examples()[name]
