"""The official `openai` client against the real server on the real default model."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.conftest import MODEL, Server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models(client: OpenAI) -> None:
    models = client.models.list()
    # The built-in image model is listed after the language model.
    assert [m.id for m in models.data] == [MODEL, "atenea-shapes"]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4")
    assert err.value.code == "model_not_found"


def test_chat_answers_the_question(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    choice = r.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 30


def test_greedy_is_deterministic_and_streaming_matches(client: OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
        temperature=0,
        max_tokens=60,
    )
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert first == second == streamed
    assert len(first) > 50


def test_stream_chunk_rules(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    without = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, stream=True))
    assert all(c.usage is None and c.choices for c in without)


def test_length_finish_counts_exactly(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long essay about the sea."}],
        max_completion_tokens=7,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a long essay about the sea."}],
            max_tokens=7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 7
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    )


def test_stop_string_is_cut_and_never_leaks(client: OpenAI) -> None:
    base = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    text = base.choices[0].message.content
    assert "Paris" in text
    for stream in (False, True):
        kwargs = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30, stop=["Par", "zzz"])
        if stream:
            chunks = list(client.chat.completions.create(**kwargs, stream=True))
            got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            r = client.chat.completions.create(**kwargs)
            got, reason = r.choices[0].message.content, [r.choices[0].finish_reason]
        assert got == text[: text.index("Par")]
        assert reason == ["stop"]


def test_seed_reproducible(client: OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a name for a cat."}],
        temperature=1.0,
        max_tokens=25,
        seed=42,
    )
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    outs = {
        client.chat.completions.create(**{**kwargs, "seed": s}).choices[0].message.content for s in range(4)
    }
    assert a == b
    assert len(outs) > 1  # the seed changes the text


def test_sampling_extensions_accepted(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=10,
        temperature=0.7,
        top_p=0.9,
        extra_body={"top_k": 20, "min_p": 0.05, "ignore_eos": True},
        user="tester",
    )
    assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"


def test_a_top_k_beyond_the_vocabulary_is_no_filter(client: OpenAI) -> None:
    """Such a request once failed the engine step, and every request sharing it."""
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, extra_body={"top_k": 1_000_000, "ignore_eos": True}
    )
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


def test_system_message_and_text_parts(client: OpenAI) -> None:
    def ask(content: object) -> str:
        r = client.chat.completions.create(
            model=MODEL,
            temperature=0,
            max_tokens=20,
            messages=[
                {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
                {"role": "user", "content": content},
            ],
        )
        return r.choices[0].message.content

    plain = ask("What is the capital of France?")
    parts = ask([{"type": "text", "text": "What is the capital of France?"}])
    assert "Paris" in plain and parts == plain


def test_legacy_completions(client: OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5 and r.choices[0].text
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    many = client.completions.create(
        model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4, temperature=0
    )
    assert sorted(c.index for c in many.choices) == [0, 1] and many.usage.completion_tokens == 8
    ids = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 3


def test_errors_leave_the_server_healthy(client: OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=3)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100_000)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=200)
    assert err.value.body["param"] == "n"
    assert server.health()["status"] == "ok"
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content


async def test_32_concurrent_streams(aclient: AsyncOpenAI, server: Server) -> None:
    prompts = ["Count from one to ten.", "Name three fruits.", "What is 2 + 2?", "Say hello in French."]

    async def one(i: int) -> tuple[int, str, int, str | None]:
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompts[i % 4]}],
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, reason = "", 0, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return i, text, usage, reason

    results = await asyncio.gather(*(one(i) for i in range(32)))
    by_prompt: dict[int, set[str]] = {}
    for i, text, usage, reason in results:
        assert text and 0 < usage <= 24 and reason in ("stop", "length")
        assert (reason == "length") == (usage == 24)
        by_prompt.setdefault(i % 4, set()).add(text)
    # Greedy: the same prompt gives the same text whatever its batch companions.
    assert all(len(texts) == 1 for texts in by_prompt.values()), by_prompt
    assert server.wait_idle()["kv_blocks_free"] == server.health()["kv_blocks_total"]
