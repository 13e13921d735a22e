"""The Vercel AI SDK, the most used JavaScript client of LLM servers, against the live server: its
OpenAI-compatible provider and its OpenAI provider's chat model, each through plain and streamed
text, a schema-typed object and tool calls (tests/node/ai_sdk_check.mjs makes the calls)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import MODEL, Server

NODE_DIR = Path(__file__).resolve().parents[2] / "tests" / "node"
PROVIDERS = ["compatible", "openai_chat"]


@pytest.fixture(scope="module")
def results(server: Server) -> dict[str, Any]:
    assert (NODE_DIR / "node_modules" / "ai").exists(), "`make test` installs the AI SDK (tests/node)"
    result = subprocess.run(
        ["node", "ai_sdk_check.mjs", f"{server.base_url}/v1", MODEL],
        cwd=NODE_DIR,
        env={**os.environ, "AI_SDK_LOG_WARNINGS": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check(results: dict[str, Any], provider: str, name: str) -> dict[str, Any]:
    outcome = results[provider][name]
    assert "error" not in outcome, f"{provider} {name}: {outcome}"
    return outcome


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_stops_at_the_token_limit_with_its_usage(results: dict[str, Any], provider: str) -> None:
    text = check(results, provider, "text")
    assert text["text"].strip()
    assert (text["finish"], text["output"]) == ("length", 8)
    assert text["input"] > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_text_is_the_same_text(results: dict[str, Any], provider: str) -> None:
    stream = check(results, provider, "stream")
    assert stream["text"] == check(results, provider, "text")["text"]  # greedy both times
    assert stream["chunks"] > 1
    assert (stream["finish"], stream["output"]) == ("length", 8)  # from the usage chunk


@pytest.mark.parametrize("provider", PROVIDERS)
def test_object_matches_its_schema(results: dict[str, Any], provider: str) -> None:
    # The SDK itself validates the answer against the zod schema and throws if it does not parse.
    obj = check(results, provider, "object")["object"]
    assert set(obj) == {"name", "age"}
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", ["tool_call", "streamed_tool_call"])
def test_tool_calls_reach_the_sdk_parsed(results: dict[str, Any], provider: str, name: str) -> None:
    outcome = check(results, provider, name)
    assert outcome["finish"] == "tool-calls"
    assert outcome["calls"]
    for call in outcome["calls"]:
        assert call["name"] == "weather"
        assert isinstance(call["input"], dict) and isinstance(call["input"].get("city"), str)
    if name == "streamed_tool_call":
        assert "tool-input-delta" in outcome["parts"]  # the arguments arrived while generated
