"""`atenea models | complete | chat` against the real server, run as users run them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.e2e.conftest import MODEL, Server


def atenea(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATENEA_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_models_lists_the_served_model(server: Server) -> None:
    result = atenea("models", "--base-url", f"{server.base_url}/v1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[0] == MODEL


def test_base_url_from_the_environment(server: Server) -> None:
    result = atenea("models", "--json", env={"ATENEA_BASE_URL": f"{server.base_url}/v1"})
    assert result.returncode == 0, result.stderr
    assert f'"id": "{MODEL}"' in result.stdout


def test_complete_streams_the_same_text_as_the_api(server: Server, client) -> None:
    prompt = "The capital of France is"
    expected = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    result = atenea(
        "complete", prompt, "--base-url", f"{server.base_url}/v1", "--max-tokens", "8", "--temperature", "0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.choices[0].text + "\n"
    # The prompt from stdin, not streamed, gives the same text.
    result = atenea(
        "complete", "--no-stream", "--base-url", f"{server.base_url}/v1", "--max-tokens", "8",
        "--temperature", "0", stdin=prompt,
    )  # fmt: skip
    assert result.stdout == expected.choices[0].text + "\n"


def test_chat_keeps_the_conversation_and_streams_each_reply(server: Server, client) -> None:
    question = "What is the capital of France?"
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0
    )
    answer = first.choices[0].message.content
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And of Spain?"},
        ],
        max_tokens=16,
        temperature=0,
    )
    result = atenea(
        "chat", "--base-url", f"{server.base_url}/v1", "--max-tokens", "16", "--temperature", "0",
        stdin=f"{question}\nAnd of Spain?\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{answer}\n{follow_up.choices[0].message.content}\n"


def test_chat_reset_and_system_prompt(server: Server, client) -> None:
    system = "You are a pirate. Answer like a pirate."
    expected = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hello"}],
        max_tokens=12,
        temperature=0,
    )
    result = atenea(
        "chat", "--base-url", f"{server.base_url}/v1", "--max-tokens", "12", "--temperature", "0",
        stdin=f"What is 2+2?\n/reset\n/system {system}\nHello\n/exit\nnever sent\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected.choices[0].message.content.splitlines()[-1]
    assert len(result.stdout.strip().split("\n")) >= 2


def test_server_errors_are_one_line_not_a_traceback(server: Server) -> None:
    result = atenea("complete", "hi", "--base-url", f"{server.base_url}/v1", "--model", "no-such-model")
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr and "model_not_found" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_server_is_reported(server: Server) -> None:
    result = atenea("models", "--base-url", "http://127.0.0.1:9/v1")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9/v1" in result.stderr


def test_chat_local_runs_the_engine_in_process(default_model_path: object) -> None:
    result = atenea(
        "chat", "--local", "--max-tokens", "8", "--temperature", "0",
        stdin="What is the capital of France?\n", env={"ATENEA_MAX_MODEL_LEN": "512"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
