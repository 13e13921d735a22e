"""The chat surface on the real model through the official client: n, logprobs, penalties and bias,
structured output and tools, each checked for what a client relies on."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from openai import OpenAI, pydantic_function_tool
from pydantic import BaseModel
from transformers import AutoTokenizer

from tests.e2e.conftest import MODEL

STORY = [{"role": "user", "content": "Tell me a story about a dragon."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Madrid"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}},
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def test_n_choices_are_independent_samples(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=STORY, n=4, max_tokens=12, temperature=1.2, seed=5
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in r.choices}) > 1
    assert 4 <= r.usage.completion_tokens <= 4 * 12  # every choice's tokens, the prompt once
    again = client.chat.completions.create(
        model=MODEL, messages=STORY, n=4, max_tokens=12, temperature=1.2, seed=5
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_n_stream_matches_per_choice(client: OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=STORY, n=3, max_tokens=10, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    texts = {i: "" for i in range(3)}
    finishes: dict[int, list[str]] = {i: [] for i in range(3)}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index].append(c.finish_reason)
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert all(len(f) == 1 for f in finishes.values())


def test_logprobs_are_real_and_line_up_with_the_text(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=20, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert b"".join(bytes(t.bytes) for t in content) == choice.message.content.encode()
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert t.logprob == pytest.approx(tops[0], abs=1e-4)  # greedy took the most likely token
    streamed = []
    for chunk in client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=20, temperature=0, logprobs=True, stream=True
    ):
        for c in chunk.choices:
            streamed += [t.token for t in (c.logprobs.content if c.logprobs else None) or []]
    assert "".join(streamed) == choice.message.content


def test_frequency_penalty_and_logit_bias_change_the_output(client: OpenAI, default_model_path: Path) -> None:
    kwargs = dict(model=MODEL, messages=STORY, max_tokens=40, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    penalised = client.chat.completions.create(**kwargs, frequency_penalty=2.0).choices[0].message.content
    assert penalised != plain
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    (banana,) = tokenizer.encode(" banana")
    forced = client.chat.completions.create(**{**kwargs, "max_tokens": 3}, logit_bias={str(banana): 100})
    assert forced.choices[0].message.content == " banana" * 3
    first = tokenizer.encode(plain)[0]
    banned = client.chat.completions.create(**{**kwargs, "max_tokens": 3}, logit_bias={str(first): -100})
    assert tokenizer.encode(banned.choices[0].message.content)[0] != first


def test_json_schema_output_always_validates(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Describe a person who lives in a European city, as JSON."}]
    r = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        n=4,
        temperature=1.0,
        max_tokens=120,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
    )
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)


class Person(BaseModel):
    name: str
    age: int


class Weather(BaseModel):
    city: str


def test_the_clients_parse_helpers_get_typed_objects(client: OpenAI) -> None:
    """`chat.completions.parse`, the official client's structured-output helper: a pydantic model
    as the response format (a strict JSON schema), and a pydantic model as a strict tool."""
    kwargs = {"model": MODEL, "temperature": 0, "max_tokens": 64}
    answer = client.chat.completions.parse(
        **kwargs, messages=[{"role": "user", "content": "Ann is 30."}], response_format=Person
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(answer.choices[0].message.parsed, Person)
    called = client.chat.completions.parse(
        **kwargs,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[pydantic_function_tool(Weather)],
        tool_choice="required",
    )
    assert called.choices[0].finish_reason == "tool_calls"
    calls = called.choices[0].message.tool_calls
    assert calls and all(isinstance(call.function.parsed_arguments, Weather) for call in calls)
    with client.chat.completions.stream(
        **kwargs, messages=[{"role": "user", "content": "Ann is 30."}], response_format=Person
    ) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion().choices[0].message.parsed
    assert streamed == answer.choices[0].message.parsed  # greedy both ways


def test_json_object_output_parses(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object with a colour."}],
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_named_tool_call_and_the_round_trip(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=80,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    follow_up = [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "unit": "c"}'},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=follow_up, tools=[WEATHER], max_tokens=30)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_required_tool_calls_stream_as_openai_streams_them(client: OpenAI) -> None:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
        stream=True,
    ):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for t in c.delta.tool_calls or []:
                entry = calls.setdefault(t.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += t.id or ""
                entry["name"] += (t.function.name if t.function else None) or ""
                entry["arguments"] += (t.function.arguments if t.function else None) or ""
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["name"] in ("get_weather", "get_time") and call["id"].startswith("call_")
    tool = WEATHER if call["name"] == "get_weather" else TIME
    jsonschema.validate(json.loads(call["arguments"]), tool["function"]["parameters"])


def test_legacy_logprobs_and_echo(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    choice = r.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    echoed = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "The capital of France is" + choice.text
