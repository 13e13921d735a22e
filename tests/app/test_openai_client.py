"""The official `openai` SDK against the app, as users call it."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

from tests.app.fake_engine import FakeEngine

MESSAGES = [{"role": "user", "content": "say something"}]


async def test_models(openai_client: AsyncOpenAI) -> None:
    page = await openai_client.models.list()
    assert [m.id for m in page.data] == ["fake-model"]
    model = await openai_client.models.retrieve("fake-model")
    assert (model.id, model.object, model.owned_by) == ("fake-model", "model", "atenea")


async def test_chat_completion(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_completion_tokens=3, temperature=0
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "user: say something"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_chat_stream_with_usage(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "user: say something user:"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_chat_stream_helper_accumulates(openai_client: AsyncOpenAI) -> None:
    async with openai_client.chat.completions.stream(
        model="fake-model", messages=MESSAGES, max_tokens=10, stop=[" some"]
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "user: say"
    assert final.choices[0].finish_reason == "stop"


async def test_legacy_completions(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.completions.create(model="fake-model", prompt=["a b", "c"], max_tokens=2)
    assert [(c.index, c.text) for c in completion.choices] == [(0, "a b"), (1, "c c")]
    stream = await openai_client.completions.create(
        model="fake-model", prompt="x y z", max_tokens=3, stream=True
    )
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "x y z"


async def test_errors_raise_the_sdk_exceptions(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await openai_client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=5)
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as not_yet:
        await openai_client.chat.completions.create(
            model="fake-model", messages=MESSAGES, reasoning_effort="high"
        )
    assert not_yet.value.param == "reasoning_effort" and not_yet.value.code == "unsupported_parameter"


async def test_mid_stream_error_raises_in_the_sdk(openai_client: AsyncOpenAI, engine: FakeEngine) -> None:
    engine.fail_after = 1
    stream = await openai_client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=5, stream=True
    )
    with pytest.raises(openai.APIError, match="fake engine failure"):
        async for _ in stream:
            pass


async def test_extra_body_extensions(openai_client: AsyncOpenAI, engine: FakeEngine) -> None:
    await openai_client.chat.completions.create(
        model="fake-model", messages=MESSAGES, max_tokens=1, extra_body={"top_k": 5, "min_p": 0.1}
    )
    assert (engine.calls[0].params.top_k, engine.calls[0].params.min_p) == (5, 0.1)
