"""The chat surface beyond a prompt: n choices, logprobs, penalties and bias, response formats and
tools, through the real app (fake engine), checked against OpenAI's schemas and its SDK's types."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from model_runtime import ConstraintKind
from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas
from tests.app.sse import json_events

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "one two three"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": MESSAGES, **fields}


async def stream_events(
    client: httpx.AsyncClient, body: dict[str, Any], openapi: OpenAPISchemas
) -> list[dict]:
    response = await client.post(CHAT, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    events = json_events(response.text)
    for event in events:
        openapi.validate("CreateChatCompletionStreamResponse", event)
    return events


async def test_n_choices_share_one_prompt(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    body = (await client.post(CHAT, json=chat(n=3, max_tokens=2))).json()
    openapi.validate("CreateChatCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) == 1
    prompt = len(engine.calls[0].prompt_ids)
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 6, "total_tokens": prompt + 6}
    assert engine.calls[0].params.n == 3 and len(engine.calls) == 1  # one request, n samples


async def test_n_choices_stream_interleaved_each_with_its_finish(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    events = await stream_events(client, chat(n=2, max_tokens=3), openapi)
    choices = [c for e in events for c in e["choices"]]
    for index in (0, 1):
        mine = [c for c in choices if c["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["finish_reason"] for c in mine].count("length") == 1 and mine[-1][
            "finish_reason"
        ] == "length"
        assert "".join(c["delta"].get("content", "") for c in mine) == "user: one two"
    indexes = [c["index"] for c in choices if c["delta"].get("content")]
    assert indexes[:2] == [0, 1]  # interleaved, not one choice after the other


async def test_penalties_and_bias_reach_the_engine(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = chat(
        presence_penalty=0.5, frequency_penalty=-1, logit_bias={"7": -100, "12": 3.5}, repetition_penalty=1.2
    )
    assert (await client.post(CHAT, json=body)).status_code == 200
    params = engine.calls[0].params
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -1.0, 1.2)
    assert params.logit_bias == ((7, -100.0), (12, 3.5))


async def test_logit_bias_outside_the_vocabulary_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat(logit_bias={"60000": 1}))
    assert response.status_code == 400 and response.json()["error"]["param"] == "logit_bias"


async def test_logprobs_line_up_with_the_content(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    body = (await client.post(CHAT, json=chat(max_tokens=3, logprobs=True, top_logprobs=2))).json()
    openapi.validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    assert all(len(t["top_logprobs"]) == 2 and t["bytes"] == list(t["token"].encode()) for t in content)
    events = await stream_events(client, chat(max_tokens=3, logprobs=True), openapi)
    streamed = [
        t for e in events for c in e["choices"] if c.get("logprobs") for t in c["logprobs"]["content"]
    ]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]
    assert all(t["top_logprobs"] == [] for t in streamed)


async def test_no_logprobs_unless_asked(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = (await client.post(CHAT, json=chat(max_tokens=2, logprobs=False))).json()
    assert body["choices"][0]["logprobs"] is None and engine.calls[0].params.logprobs is None


@pytest.mark.parametrize(
    ("response_format", "kind"),
    [
        ({"type": "json_object"}, ConstraintKind.JSON_OBJECT),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "p", "strict": True, "schema": {"type": "object"}},
            },
            ConstraintKind.JSON_SCHEMA,
        ),
    ],
)
async def test_response_format_becomes_a_constraint(
    client: httpx.AsyncClient, engine: FakeEngine, response_format: dict[str, Any], kind: ConstraintKind
) -> None:
    assert (await client.post(CHAT, json=chat(response_format=response_format))).status_code == 200
    constraint = engine.calls[0].params.constraint
    assert constraint is not None and constraint.kind is kind


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "no-such-type"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"type": "array"},
    ],
)
async def test_invalid_or_unsupported_schema_is_a_400(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, schema: dict[str, Any]
) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    response = await client.post(CHAT, json=chat(response_format=response_format))
    assert response.status_code == 400, response.text
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["param"].startswith("response_format")


async def test_auto_tool_call_is_parsed(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    engine.script = CALL_TEXT
    body = (await client.post(CHAT, json=chat(tools=[WEATHER]))).json()
    openapi.validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert engine.rendered_tools[0] is not None and engine.rendered_tools[0][0].name == "get_weather"
    assert engine.calls[0].params.constraint is None  # "auto": the model chooses freely


async def test_tool_call_streams_as_openai_streams_it(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    engine.script = "Let me check. " + CALL_TEXT
    events = await stream_events(client, chat(tools=[WEATHER]), openapi)
    deltas = [c["delta"] for e in events for c in e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert "".join(d.get("content") or "" for d in deltas) == "Let me check. "
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["tool_calls"]


async def test_text_that_is_not_a_call_stays_content(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script = "a < b and <tool_call> is not closed"
    body = (await client.post(CHAT, json=chat(tools=[WEATHER]))).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == engine.script and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


@pytest.mark.parametrize(
    ("tool_choice", "forced"),
    [("required", None), ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")],
)
async def test_required_and_named_choices_are_enforced_by_a_grammar(
    client: httpx.AsyncClient, engine: FakeEngine, tool_choice: Any, forced: str | None
) -> None:
    engine.script = CALL_TEXT
    body = chat(tools=[WEATHER, {**WEATHER, "function": {"name": "other"}}], tool_choice=tool_choice)
    response = await client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    constraint = engine.calls[0].params.constraint
    assert constraint is not None and constraint.kind is ConstraintKind.LARK
    assert ('"const": "other"' in constraint.spec) is (forced is None)
    # A named function is called exactly once; "required" may call several (parallel by default).
    assert ('("\\n" call)*' in constraint.spec) is (forced is None)


async def test_tool_choice_none_hides_the_tools(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script = CALL_TEXT
    body = (await client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="none"))).json()
    assert engine.rendered_tools == [None]
    assert body["choices"][0]["message"]["content"] == CALL_TEXT


async def test_parallel_tool_calls_false_keeps_one_call(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.max_model_len = 400
    engine.script = CALL_TEXT + "\n" + CALL_TEXT.replace("Paris", "Rome")
    body = chat(tools=[WEATHER], parallel_tool_calls=False)
    message = (await client.post(CHAT, json=body)).json()["choices"][0]["message"]
    assert len(message["tool_calls"]) == 1
    message = (await client.post(CHAT, json={**body, "parallel_tool_calls": True})).json()["choices"][0][
        "message"
    ]
    assert [json.loads(c["function"]["arguments"])["city"] for c in message["tool_calls"]] == [
        "Paris",
        "Rome",
    ]


async def test_tool_results_go_back_to_the_template(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    response = await client.post(CHAT, json={"model": "fake-model", "messages": messages, "tools": [WEATHER]})
    assert response.status_code == 200, response.text
    rendered = engine.rendered[0]
    assert rendered[1].extra["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
        }
    ]
    assert (rendered[2].role, rendered[2].content, rendered[2].extra["tool_call_id"]) == (
        "tool",
        "sunny",
        "call_1",
    )


async def test_sdk_types_parse_tool_calls_and_logprobs(
    openai_client: AsyncOpenAI, engine: FakeEngine
) -> None:
    engine.max_model_len = 400
    engine.script = CALL_TEXT
    completion = await openai_client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        tools=[WEATHER],
        logprobs=True,
        top_logprobs=1,
        # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert choice.message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert choice.logprobs and choice.logprobs.content and choice.logprobs.content[0].top_logprobs
    stream = await openai_client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        tools=[WEATHER],  # type: ignore[list-item]
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        n=2,
    )
    names, usage = [], None
    async for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            names += [t.function.name for t in c.delta.tool_calls or [] if t.function and t.function.name]
    assert names == ["get_weather", "get_weather"] and usage is not None and usage.completion_tokens > 0
