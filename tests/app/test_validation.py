"""Bad requests: every one is a 400 in OpenAI's envelope with `param` naming the culprit."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest

from app.schemas.chat import ChatCompletionRequest
from app.schemas.completions import CompletionRequest
from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas

USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
LEGACY = "/v1/completions"

# Our extensions over OpenAI's request schemas (vLLM's names).
EXTENSIONS = {"top_k", "min_p", "ignore_eos", "stop_token_ids", "repetition_penalty"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": USER, **fields}


def legacy(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "prompt": "hi", **fields}


async def error_of(response: httpx.Response, openapi: OpenAPISchemas, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    openapi.validate("ErrorResponse", body)
    assert set(body) == {"error"} and "detail" not in body
    assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["code"], str)
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat(temperature=2.5), "temperature"),
        (CHAT, chat(temperature=-0.1), "temperature"),
        (CHAT, chat(top_p=1.5), "top_p"),
        (CHAT, chat(top_p=-0.5), "top_p"),
        (CHAT, chat(max_tokens=0), "max_tokens"),
        (CHAT, chat(max_tokens=-5), "max_tokens"),
        (CHAT, chat(max_completion_tokens=0), "max_completion_tokens"),
        (CHAT, chat(messages=[]), "messages"),
        (CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role"),
        (CHAT, chat(messages=[*USER, {"content": "no role"}]), "messages.1.role"),
        (CHAT, chat(messages=[{"role": "user"}]), "messages.0.content"),
        (CHAT, chat(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (CHAT, chat(messages=[{"role": "user", "content": []}]), "messages.0.content"),
        (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content"),
        (CHAT, chat(messages="hi"), "messages"),
        (CHAT, {"messages": USER}, "model"),
        (CHAT, {"model": "fake-model"}, "messages"),
        (CHAT, chat(model=5), "model"),
        (CHAT, chat(temperature="0.5"), "temperature"),
        (CHAT, chat(max_tokens=1.5), "max_tokens"),
        (CHAT, chat(stream="yes"), "stream"),
        (CHAT, chat(seed="1"), "seed"),
        (CHAT, chat(seed=2**64), "seed"),
        (CHAT, chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (CHAT, chat(stop=5), "stop"),
        (CHAT, chat(stop=[""]), "stop"),
        (CHAT, chat(top_k=-2), "top_k"),
        (CHAT, chat(min_p=1.5), "min_p"),
        (CHAT, chat(ignore_eos="no"), "ignore_eos"),
        (CHAT, chat(stream_options={"include_usage": True}), "stream_options"),
        (CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (LEGACY, legacy(max_tokens=0), "max_tokens"),
        (LEGACY, legacy(temperature=3), "temperature"),
        (LEGACY, {"model": "fake-model"}, "prompt"),
        (LEGACY, legacy(prompt=None), "prompt"),
        (LEGACY, legacy(prompt=[]), "prompt"),
        (LEGACY, legacy(prompt=[[]]), "prompt"),
        (LEGACY, legacy(prompt=[1, "a"]), "prompt"),
        (LEGACY, legacy(prompt=[-1]), "prompt"),
        (LEGACY, legacy(prompt=7), "prompt"),
    ],
)
async def test_invalid_request_names_param(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, path: str, body: dict[str, Any], param: str
) -> None:
    error = await error_of(await client.post(path, json=body), openapi)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_prompt_of_wrong_type_message(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    error = await error_of(await client.post(LEGACY, json=legacy(prompt=7)), openapi)
    assert error["code"] == "invalid_type"
    assert error["message"] == (
        "Invalid type for 'prompt': expected a string, an array of strings, an array of integers "
        "or an array of arrays of integers."
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
            "Invalid value for 'response_format.json_schema.name': String should match pattern "
            "'^[a-zA-Z0-9_-]{1,64}$'.",
        ),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
            "Missing required parameter: 'response_format.json_schema.name'.",
        ),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}, "strict": True}),
            "Unrecognized argument 'strict' in 'response_format'.",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="any"),
            "Invalid type for 'tool_choice': expected one of 'none', 'auto', 'required' or an object.",
        ),
    ],
)
async def test_messages_name_the_parameter_as_sent(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, body: dict[str, Any], message: str
) -> None:
    """A union told apart by `type` reports the path the client wrote, not its member's tag too."""
    error = await error_of(await client.post(CHAT, json=body), openapi)
    assert error["message"] == message


async def test_missing_field_message(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    error = await error_of(await client.post(CHAT, json={"model": "fake-model"}), openapi)
    assert (error["message"], error["code"]) == (
        "Missing required parameter: 'messages'.",
        "missing_required_parameter",
    )


@pytest.mark.parametrize("path", [CHAT, LEGACY])
async def test_unknown_field_is_rejected(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, path: str
) -> None:
    body = chat(frobnicate=1) if path == CHAT else legacy(frobnicate=1)
    error = await error_of(await client.post(path, json=body), openapi)
    assert error["message"] == "Unrecognized request argument supplied: frobnicate"
    assert error["param"] == "frobnicate"


async def test_unknown_nested_field_is_rejected(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    body = chat(messages=[{"role": "user", "content": "hi", "mood": "happy"}])
    error = await error_of(await client.post(CHAT, json=body), openapi)
    assert error["param"] == "messages.0.mood"


async def test_legacy_only_field_on_chat_is_unknown(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    error = await error_of(await client.post(CHAT, json=chat(echo=False)), openapi)
    assert error["param"] == "echo" and error["code"] == "unknown_parameter"


async def test_unknown_model_is_404(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    for path, body in ((CHAT, chat(model="gpt-4o")), (LEGACY, legacy(model="gpt-4o"))):
        error = await error_of(await client.post(path, json=body), openapi, status=404)
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "model_not_found",
            "model",
        )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "fake-model", "messages": [',
        b"not json at all",
        b'{"model": "x",}',
        gzip.compress(b'{"model": "fake-model"}'),  # not UTF-8: the client compressed it
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser recurses
    ],
)
async def test_malformed_json(client: httpx.AsyncClient, openapi: OpenAPISchemas, raw: bytes) -> None:
    response = await client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    error = await error_of(response, openapi)
    assert error["code"] == "invalid_json" and error["param"] is None


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        (b"", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b'{"model": "fake-model"}', {"content-type": "application/x-www-form-urlencoded"}),
    ],
)
async def test_body_that_is_not_an_object(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, raw: bytes, headers: dict[str, str]
) -> None:
    error = await error_of(await client.post(CHAT, content=raw, headers=headers), openapi)
    assert error["param"] is None and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}], "messages.0.content"),
        ([{"type": "text", "text": "a"}, {"type": "input_audio", "input_audio": {}}], "messages.0.content"),
        ([{"type": "file", "file": {}}], "messages.0.content"),
    ],
)
async def test_non_text_content_parts_are_not_supported_yet(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, content: list[dict[str, Any]], param: str
) -> None:
    body = chat(messages=[{"role": "user", "content": content}])
    error = await error_of(await client.post(CHAT, json=body), openapi)
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert content[-1]["type"] in error["message"]


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        ({"role": "function", "content": "42", "name": "f"}, "messages.1.role", "unsupported_parameter"),
        ({"role": "tool", "content": "42"}, "messages.1", "missing_required_parameter"),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
            "messages.1.tool_calls.0.function",
            "missing_required_parameter",
        ),
        (
            {"role": "assistant", "content": "x", "refusal": "no"},
            "messages.1.refusal",
            "unsupported_parameter",
        ),
        (
            {"role": "assistant", "content": "x", "audio": {"id": "a"}},
            "messages.1.audio",
            "unsupported_parameter",
        ),
    ],
)
async def test_bad_tool_and_assistant_messages(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, message: dict[str, Any], param: str, code: str
) -> None:
    body = chat(messages=[*USER, message])
    error = await error_of(await client.post(CHAT, json=body), openapi)
    assert (error["param"], error["code"]) == (param, code)


async def test_assistant_message_with_neutral_tool_fields_is_accepted(client: httpx.AsyncClient) -> None:
    message = {"role": "assistant", "content": "ok", "tool_calls": [], "refusal": None, "function_call": None}
    response = await client.post(CHAT, json=chat(messages=[*USER, message, *USER]))
    assert response.status_code == 200, response.text


# (field, neutral values accepted, a value that is not neutral)
CHAT_NOT_YET: list[tuple[str, list[Any], Any]] = [
    ("functions", [None], [{"name": "f"}]),
    ("function_call", [None, "none", "auto"], {"name": "f"}),
    ("audio", [None], {"voice": "alloy", "format": "wav"}),
    ("modalities", [None, ["text"]], ["text", "audio"]),
    ("prediction", [None], {"type": "content", "content": "x"}),
    ("reasoning_effort", [None, "none"], "high"),
    ("verbosity", [None, "medium"], "low"),
    ("web_search_options", [None], {}),
    ("moderation", [None], {"model": "omni-moderation-latest"}),
]
LEGACY_NOT_YET: list[tuple[str, list[Any], Any]] = [
    ("suffix", [None, ""], "end"),
]
# Implemented: every value the spec allows is taken (the tests of each feature check its effect);
# these are values each field's range or rules refuse.
CHAT_OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("n", 0),
    ("n", 129),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -3),
    ("logit_bias", {"50256": 101}),
    ("logit_bias", {"token": 1}),
    ("top_logprobs", 21),
    ("top_logprobs", 2),  # without logprobs: true
    ("response_format", {"type": "yaml"}),
    ("response_format", {"type": "json_schema"}),
    ("tools", [{"type": "function", "function": {"name": "bad name"}}]),
    ("tools", [{"type": "custom", "custom": {"name": "f"}}]),
    ("tool_choice", "required"),  # without tools
    ("repetition_penalty", 0),
]
LEGACY_OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("n", 0),
    ("logprobs", 6),
    ("best_of", 3),  # larger than n: ranking samples away is not supported
    ("logit_bias", {"-1": 5}),
]
CHAT_INFORMATIONAL: list[tuple[str, Any]] = [
    ("user", "user-1234"),
    ("metadata", {"team": "a"}),
    ("store", True),
    ("service_tier", "flex"),
    ("prompt_cache_key", "k"),
    ("prompt_cache_retention", "24h"),
    ("prompt_cache_options", {"ttl": "30m"}),
    ("safety_identifier", "hash"),
    ("stream_options", None),
]


def _cases(table: list[tuple[str, list[Any], Any]]) -> list[Any]:
    return [
        pytest.param(name, value, id=f"{name}={value!r}") for name, values, _ in table for value in values
    ]


@pytest.mark.parametrize(("field", "value"), _cases(CHAT_NOT_YET))
async def test_chat_neutral_value_is_accepted(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, field: str, value: Any
) -> None:
    body = chat(**{field: value})
    response = await client.post(CHAT, json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("field", "value"), [(name, bad) for name, _, bad in CHAT_NOT_YET])
async def test_chat_non_neutral_value_is_rejected(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, field: str, value: Any
) -> None:
    error = await error_of(await client.post(CHAT, json=chat(**{field: value})), openapi)
    assert (error["param"], error["code"], error["type"]) == (
        field,
        "unsupported_parameter",
        "invalid_request_error",
    )
    assert f"'{field}'" in error["message"] and "not supported" in error["message"]


@pytest.mark.parametrize(("field", "value"), _cases(LEGACY_NOT_YET))
async def test_legacy_neutral_value_is_accepted(client: httpx.AsyncClient, field: str, value: Any) -> None:
    response = await client.post(LEGACY, json=legacy(**{field: value}))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("field", "value"), [(name, bad) for name, _, bad in LEGACY_NOT_YET])
async def test_legacy_non_neutral_value_is_rejected(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, field: str, value: Any
) -> None:
    error = await error_of(await client.post(LEGACY, json=legacy(**{field: value})), openapi)
    assert (error["param"], error["code"]) == (field, "unsupported_parameter")


@pytest.mark.parametrize(("field", "value"), CHAT_OUT_OF_RANGE)
async def test_chat_out_of_range_is_a_400_naming_the_field(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, field: str, value: Any
) -> None:
    error = await error_of(await client.post(CHAT, json=chat(**{field: value})), openapi)
    assert error["param"].split(".")[0] == field


@pytest.mark.parametrize(("field", "value"), LEGACY_OUT_OF_RANGE)
async def test_legacy_out_of_range_is_a_400_naming_the_field(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, field: str, value: Any
) -> None:
    error = await error_of(await client.post(LEGACY, json=legacy(**{field: value})), openapi)
    assert error["param"].split(".")[0] == field


@pytest.mark.parametrize(("field", "value"), CHAT_INFORMATIONAL)
async def test_informational_fields_are_accepted(
    client: httpx.AsyncClient, engine: FakeEngine, field: str, value: Any
) -> None:
    response = await client.post(CHAT, json=chat(**{field: value}))
    assert response.status_code == 200, response.text
    assert engine.calls, "the request must have been generated"


@pytest.mark.parametrize(
    ("schema", "model", "tables"),
    [
        ("CreateChatCompletionRequest", ChatCompletionRequest, (CHAT_NOT_YET,)),
        ("CreateCompletionRequest", CompletionRequest, (LEGACY_NOT_YET,)),
    ],
)
def test_every_spec_field_is_classified(
    openapi: OpenAPISchemas, schema: str, model: type, tables: tuple[list[tuple[str, list[Any], Any]], ...]
) -> None:
    """A field OpenAI adds to its spec must be classified here, not turned away as unknown."""
    spec_fields = openapi.properties(schema)
    ours = set(model.model_fields)
    assert spec_fields - ours == set(), "spec fields we do not know"
    assert ours - spec_fields == EXTENSIONS
    # Every not-yet field is tested here, with values the spec itself accepts (null is left out:
    # the spec is not consistent about which of these are nullable).
    not_yet = {name for table in tables for name, _, _ in table}
    assert not_yet == set(model.NOT_YET)  # type: ignore[attr-defined]
    base = (
        {"model": "m", "messages": USER} if schema.startswith("CreateChat") else {"model": "m", "prompt": "p"}
    )
    for table in tables:
        for name, values, bad in table:
            for value in [*values, bad]:
                if value is not None:
                    openapi.validate(schema, {**base, name: value})
