"""Tool calls in the model's text: how tools reach the prompt, the grammar that forces a call, and
parsing calls back out of the output (whole, or while it streams).

Calls are written in the Hermes format that Qwen2/2.5, Hermes and many Llama fine-tunes were
trained on and that their chat templates emit:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that knows tools (it reads the `tools` variable) renders the definitions itself.
For one that does not (SmolLM2's, Llama 2's), `fallback_tools_prompt` writes them into the system
message, assistant calls are written back into the assistant's text in the same format, and tool
results go in as user messages wrapped in <tool_response> (templates without tool support often
accept only system/user/assistant).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model_runtime.api import ChatMessage, Constraint, ConstraintKind, ToolChoice, ToolSpec

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# The grammar's JSON options (see grammar.JSON_OPTIONS), given inside the embedded schema.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def template_supports_tools(template_source: str) -> bool:
    return "tools" in template_source


def tools_for_template(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The `tools` variable as Hugging Face templates expect it (OpenAI's tool objects)."""
    return [{"type": "function", "function": tool.as_function()} for tool in tools]


def fallback_tools_prompt(tools: Sequence[ToolSpec]) -> str:
    listing = "\n".join(json.dumps(tool.as_function(), ensure_ascii=False) for tool in tools)
    return (
        "You may call one or more functions to help with the user's request. The functions are:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "To call a function, reply with a JSON object holding its name and arguments inside "
        f"{CALL_OPEN}{CALL_CLOSE} tags, one per call:\n"
        f'{CALL_OPEN}\n{{"name": "<function-name>", "arguments": {{...}}}}\n{CALL_CLOSE}'
    )


def format_call(name: str, arguments: Any) -> str:
    """One call as the model writes it; `arguments` is an object, or the JSON text of one."""
    args = arguments
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # not JSON: kept as the string the client sent
            args = json.loads(arguments)
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def with_fallback_tools(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> list[ChatMessage]:
    """The conversation rewritten for a template without tool support (see the module docstring)."""
    out: list[ChatMessage] = []
    for message in messages:
        calls = message.extra.get("tool_calls")
        if message.role == "assistant" and isinstance(calls, list) and calls:
            extra = {k: v for k, v in message.extra.items() if k != "tool_calls"}
            text = "\n".join(
                format_call(str(c["function"]["name"]), c["function"]["arguments"]) for c in calls
            )
            content = f"{message.content}\n{text}" if message.content else text
            out.append(ChatMessage("assistant", content, extra))
        elif message.role == "tool":
            extra = {k: v for k, v in message.extra.items() if k != "tool_call_id"}
            out.append(ChatMessage("user", f"<tool_response>\n{message.content}\n</tool_response>", extra))
        else:
            out.append(message)  # untouched: only tool traffic is rewritten
    if tools:
        prompt = fallback_tools_prompt(tools)
        if out and out[0].role == "system":
            out[0] = ChatMessage("system", f"{out[0].content}\n\n{prompt}", out[0].extra)
        else:
            out.insert(0, ChatMessage("system", prompt))
    return out


def call_constraint(tools: Sequence[ToolSpec], forced: str | None, parallel: bool) -> Constraint:
    """A grammar whose every sentence is one call (several when `parallel`) to the forced function,
    or to any of the tools when none is forced (`tool_choice: "required"`)."""
    chosen = [t for t in tools if forced is None or t.name == forced]
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    schema: dict[str, Any] = variants[0] if len(variants) == 1 else {"anyOf": variants}
    schema = {**schema, "x-guidance": _JSON_OPTIONS}
    repeat = ' ("\\n" call)*' if parallel else ""
    lark = (
        f"start: call{repeat}\n"
        f'call: "{CALL_OPEN}\\n" body "\\n{CALL_CLOSE}"\n'
        f"body: %json {json.dumps(schema)}\n"
    )
    return Constraint(ConstraintKind.LARK, lark)


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# The start of a call written name first, as the grammar writes it and models mostly do: from here
# on the arguments can be streamed as they are generated.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
# Held back while a call's arguments stream: the outer object's "}" and the closing tag may follow.
_HOLD = len("}\n" + CALL_CLOSE) + 2


def _raw_arguments(body: str) -> str | None:
    """The arguments exactly as written, for a name-first call; None for any other layout."""
    head = _CALL_HEAD.match(body)
    if head is None:
        return None
    rest = body[head.end() :].rstrip()
    if not rest.endswith("}"):
        return None
    return rest[:-1].rstrip()


def parse_call(body: str) -> ParsedCall | None:
    """The JSON between the tags; None when it is not a call (the text then stays content)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    raw = _raw_arguments(body)
    if raw is not None:
        text = raw  # as generated, so a streamed call and a whole one read the same
    else:
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ParsedCall(new_call_id(), value["name"], text)


@dataclass(frozen=True)
class ContentPiece:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str  # the next fragment of the call's arguments (JSON text)


StreamEvent = ContentPiece | CallStart | CallArguments


class ToolCallParser:
    """Splits streamed text into content and calls, as OpenAI streams them.

    Text that could be the start of `<tool_call>` is held back until it is known not to be. A call
    written name first is announced as soon as its name is complete and its arguments then follow
    in fragments as they are generated (the last few characters are held back: the object's
    closing brace and the closing tag may follow); a call in another layout is sent whole once its
    closing tag arrives. A body that is not a call, or a call never closed, is given back as
    content, so no text is ever lost.
    """

    def __init__(self) -> None:
        self._buffer = ""  # outside a call: text not yet sent; inside: the call's body so far
        self._in_call = False
        self._calls = 0
        self._started = False  # the current call has been announced
        self._args_start = 0  # where its arguments begin in the body
        self._args_sent = 0  # how much of the body, from there, has gone out
        self._after_call = False  # the newline between two calls is not content

    def feed(self, text: str) -> list[StreamEvent]:
        self._buffer += text
        events: list[StreamEvent] = []
        while True:
            if not self._in_call:
                if self._after_call:
                    self._buffer = self._buffer.lstrip("\n")
                    if not self._buffer:
                        return events
                    self._after_call = False
                start = self._buffer.find(CALL_OPEN)
                if start < 0:
                    keep = _partial_suffix(self._buffer, CALL_OPEN)
                    emit = self._buffer[: len(self._buffer) - keep]
                    if emit:
                        events.append(ContentPiece(emit))
                    self._buffer = self._buffer[len(emit) :]
                    return events
                if start:
                    events.append(ContentPiece(self._buffer[:start]))
                self._buffer = self._buffer[start + len(CALL_OPEN) :]
                self._in_call, self._started = True, False
            end = self._buffer.find(CALL_CLOSE)
            body = self._buffer if end < 0 else self._buffer[:end]
            if not self._started and (head := _CALL_HEAD.match(body)) is not None:
                name = json.loads(f'"{head.group(1)}"')
                events.append(CallStart(self._calls, new_call_id(), name))
                self._started, self._args_start = True, head.end()
                self._args_sent = head.end()
            if self._started:
                if end < 0:
                    safe = len(body) - _HOLD
                else:
                    raw = _raw_arguments(body)
                    safe = self._args_start + len(raw) if raw is not None else len(body.rstrip())
                if safe > self._args_sent:
                    events.append(CallArguments(self._calls, body[self._args_sent : safe]))
                    self._args_sent = safe
            if end < 0:
                return events
            was_call = self._started
            if not self._started:
                call = parse_call(body.strip())
                if call is None:
                    events.append(ContentPiece(CALL_OPEN + body + CALL_CLOSE))
                else:
                    events.append(CallStart(self._calls, call.id, call.name))
                    events.append(CallArguments(self._calls, call.arguments))
                    was_call = True
            self._buffer = self._buffer[end + len(CALL_CLOSE) :]
            self._in_call = False
            if was_call:
                self._calls += 1
                self._after_call = True

    def finish(self) -> list[StreamEvent]:
        """At the end of the output: what is still held. An unclosed call that was announced has
        sent its arguments so far; one that was not goes out as content."""
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            if self._started:
                tail = rest[self._args_sent :]
                return [CallArguments(self._calls, tail)] if tail else []
            rest = CALL_OPEN + rest
        return [ContentPiece(rest)] if rest else []

    @property
    def num_calls(self) -> int:
        return self._calls + (1 if self._in_call and self._started else 0)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def choice_needs_constraint(choice: ToolChoice) -> bool:
    return choice in (ToolChoice.REQUIRED, ToolChoice.NAMED)


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedCall]]:
    """A finished output -> (content outside the calls or None, the calls).

    The streaming parser run over the whole text, so a response reads as its stream does, a call
    cut off by `max_tokens` included (announced once its name was complete, with the arguments
    written so far); only the content is stripped when there are calls, as OpenAI returns it."""
    parser = ToolCallParser()
    content: list[str] = []
    calls: dict[int, ParsedCall] = {}
    for event in parser.feed(text) + parser.finish():
        if isinstance(event, ContentPiece):
            content.append(event.text)
        elif isinstance(event, CallStart):
            calls[event.index] = ParsedCall(event.id, event.name, "")
        else:
            call = calls[event.index]
            calls[event.index] = ParsedCall(call.id, call.name, call.arguments + event.text)
    joined = "".join(content)
    ordered = [calls[i] for i in sorted(calls)]
    return (joined.strip() or None) if ordered else joined, ordered
