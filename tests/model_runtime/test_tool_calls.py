"""Tool calls in text: the streaming parser, the whole-output parser, the fallback prompt and the
grammar that forces calls."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import llguidance.hf
import pytest
from transformers import AutoTokenizer

from model_runtime.api import ChatMessage, ToolSpec
from model_runtime.grammar import grammar_of
from model_runtime.tokenizer import Tokenizer
from model_runtime.tool_calls import (
    CallArguments,
    CallStart,
    ContentPiece,
    ToolCallParser,
    call_constraint,
    parse_tool_calls,
)

WEATHER = ToolSpec(
    "get_weather",
    "Weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'


def stream(text: str, step: int) -> list[ContentPiece | CallStart | CallArguments]:
    parser = ToolCallParser()
    events = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i : i + step])
    return events + parser.finish()


def assemble(events: list[ContentPiece | CallStart | CallArguments]) -> tuple[str, list[tuple[str, str]]]:
    content = "".join(e.text for e in events if isinstance(e, ContentPiece))
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for e in events:
        if isinstance(e, CallStart):
            names[e.index], calls[e.index] = e.name, []
        elif isinstance(e, CallArguments):
            calls[e.index].append(e.text)
    return content, [(names[i], "".join(calls[i])) for i in sorted(calls)]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_streamed_calls_match_the_whole_parse(step: int) -> None:
    text = "Checking. " + CALL + "\n" + CALL.replace("Paris", "Rome")
    content, calls = assemble(stream(text, step))
    whole_content, whole_calls = parse_tool_calls(text)
    assert content == "Checking. " and whole_content == "Checking."
    assert calls == [(c.name, c.arguments) for c in whole_calls]
    assert [json.loads(a)["city"] for _, a in calls] == ["Paris", "Rome"]


def test_an_output_cut_anywhere_reads_the_same_whole_and_streamed() -> None:
    """As when `max_tokens` ends the output inside a call: the response has the call its stream
    announced, with the same arguments so far, and the same content."""
    text = "Checking. " + CALL + "\n" + CALL.replace("Paris", "Rome")
    for cut in range(len(text) + 1):
        whole_content, whole_calls = parse_tool_calls(text[:cut])
        for step in (1, 7):
            content, calls = assemble(stream(text[:cut], step))
            assert calls == [(c.name, c.arguments) for c in whole_calls], cut
            assert ((content.strip() or None) if calls else content) == whole_content, cut
    content, calls = parse_tool_calls(CALL[: CALL.index("3")])
    assert content is None and [(c.name, c.arguments) for c in calls] == [
        ("get_weather", '{"city": "Paris", "days": ')
    ]


def test_arguments_stream_in_fragments_before_the_call_closes() -> None:
    parser = ToolCallParser()
    events = []
    for char in CALL[: CALL.index("3")]:  # cut inside the arguments
        events += parser.feed(char)
    starts = [e for e in events if isinstance(e, CallStart)]
    fragments = [e.text for e in events if isinstance(e, CallArguments)]
    assert [s.name for s in starts] == ["get_weather"] and starts[0].id.startswith("call_")
    sent = "".join(fragments)
    assert len(fragments) > 5 and len(sent) >= 10 and '{"city": "Paris", "days": 3}'.startswith(sent)


@pytest.mark.parametrize(
    "text",
    ["plain text", "a <tool", "x <tool_call> not json </tool_call> y", "<tool_call>\n[1, 2]\n</tool_call>"],
)
def test_text_that_is_not_a_call_stays_content(text: str) -> None:
    for step in (1, 100):
        content, calls = assemble(stream(text, step))
        assert (content, calls) == (text, [])
    assert parse_tool_calls(text) == (text, [])


def test_a_call_in_another_layout_is_sent_whole() -> None:
    text = '<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>'
    _, calls = assemble(stream(text, 1))
    assert calls == [("get_weather", '{"city": "Oslo"}')]


def test_fallback_prompt_for_a_template_without_tools(default_model_path: Path) -> None:
    tokenizer = Tokenizer.from_folder(default_model_path)
    assert not tokenizer.chat_template.supports_tools  # SmolLM2's template has no tool support
    messages = [
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage(
            "assistant",
            "",
            {
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ]
            },
        ),
        ChatMessage("tool", "sunny", {"tool_call_id": "c1"}),
    ]
    text = tokenizer.chat_template.render(messages, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nYou may call one or more functions")
    assert '"name": "get_weather"' in text and "<tools>" in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in text
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in text


def test_a_template_with_tools_renders_them_itself(default_model_path: Path) -> None:
    from model_runtime.tokenizer import ChatTemplate

    source = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
    template = ChatTemplate(source + "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert template.render([ChatMessage("user", "hi")], tools=[WEATHER]) == "[get_weather]hi"


@pytest.mark.parametrize("forced", [None, "get_weather"])
@pytest.mark.parametrize("parallel", [True, False])
def test_call_grammar_admits_exactly_calls(
    default_model_path: Path, forced: str | None, parallel: bool
) -> None:
    hf = AutoTokenizer.from_pretrained(default_model_path)
    ll = llguidance.hf.from_tokenizer(hf, n_vocab=49152)
    other = ToolSpec("get_time", None, {"type": "object", "properties": {"zone": {"type": "string"}}})
    grammar = grammar_of(call_constraint([WEATHER, other], forced, parallel))

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(ll, grammar)
        ids = hf.encode(text)
        return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()

    time_call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    assert accepts(CALL)
    assert accepts(time_call) is (forced is None)
    assert accepts(CALL + "\n" + CALL) is parallel
    assert not accepts("Sure! " + CALL)
    assert not accepts(
        '<tool_call>\n{"name": "get_weather", "arguments": {"days": 3}}\n</tool_call>'
    )  # city missing
