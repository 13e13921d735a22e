"""A hand-written corpus of malformed requests: each must get a 4xx in OpenAI's error envelope, with a
short message, and leave the server healthy. Used against the app (fake engine) and, over real HTTP,
against the real server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODEL = "MODEL"  # replaced by the served model id when the corpus is built
MIB = 2**20


@dataclass(frozen=True)
class Malformed:
    name: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    method: str = "POST"


def _chat(model: str, **fields: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def _completion(model: str, **fields: object) -> dict[str, object]:
    return {"model": model, "prompt": "hi", **fields}


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def _nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def corpus(model: str) -> list[Malformed]:
    cases: list[Malformed] = []

    def add(name: str, path: str, body: bytes | object, **kw: object) -> None:
        raw = body if isinstance(body, bytes) else _json(body)
        cases.append(Malformed(name, path, raw, **kw))  # type: ignore[arg-type]

    # -- broken JSON ---------------------------------------------------------------------------
    good = _json(_chat(model))
    for name, raw in {
        "empty body": b"",
        "whitespace": b"   \n ",
        "truncated object": good[: len(good) // 2],
        "missing closing brace": good[:-1],
        "trailing comma": good[:-1] + b",}",
        "single quotes": b"{'model': 'x', 'messages': []}",
        "unquoted keys": b"{model: 1}",
        "comment": b'{"model": "x" /* hi */}',
        "bare word": b"hello",
        "NaN literal": b'{"model": "x", "temperature": NaN}',
        "Infinity literal": b'{"model": "x", "temperature": Infinity}',
        "two objects": good + good,
        "garbage after object": good + b"xyz",
        "unterminated string": b'{"model": "x',
        "control character in string": b'{"model": "a\x01b", "messages": []}',
        "bad escape": b'{"model": "\\q", "messages": []}',
        "lone bracket": b"[",
        "colon only": b":",
        "binary noise": bytes(range(256)),
        "deep unclosed": b"[" * 5000,
    }.items():
        add(f"broken JSON: {name}", CHAT, raw)
    add("broken JSON on completions", COMPLETIONS, b'{"prompt": ')

    # -- the body is not an object -------------------------------------------------------------
    for name, raw in {
        "null": b"null",
        "number": b"42",
        "string": b'"hi"',
        "array": b"[1, 2]",
        "true": b"true",
    }.items():
        add(f"body is {name}", CHAT, raw)
        add(f"completions body is {name}", COMPLETIONS, raw)

    # -- wrong types ---------------------------------------------------------------------------
    chat_wrong = {
        "model": [1, None, [], {}, True],
        "messages": [
            "hi",
            {},
            [1],
            [None],
            [[]],
            [{"role": 1, "content": "x"}],
            [{"role": "user", "content": 5}],
        ],
        "max_tokens": ["5", 1.5, True, [], {}],
        "temperature": ["hot", [], {}, True],
        "top_p": ["1", []],
        "stream": ["yes", 1, {}],
        "stop": [5, [1, 2], {"a": 1}],
        "seed": [1.5, "x"],
        "stream_options": ["x", [True]],
        "user": [5, []],
    }
    for field_name, values in chat_wrong.items():
        for value in values:
            add(f"chat {field_name}={json.dumps(value)[:20]}", CHAT, {**_chat(model), field_name: value})
    for field_name, value in {
        "prompt": {},
        "max_tokens": "10",
        "echo": "yes",
        "suffix": 5,
        "stop": 9,
    }.items():
        add(f"completion {field_name} wrong type", COMPLETIONS, {**_completion(model), field_name: value})
    add("missing messages", CHAT, {"model": model})
    add("missing model", CHAT, {"messages": [{"role": "user", "content": "hi"}]})
    add("missing prompt", COMPLETIONS, {"model": model})
    add("unknown role", CHAT, {"model": model, "messages": [{"role": "wizard", "content": "hi"}]})
    add("message without role", CHAT, {"model": model, "messages": [{"content": "hi"}]})
    add("empty messages", CHAT, {"model": model, "messages": []})
    add(
        "content part of unknown type",
        CHAT,
        {"model": model, "messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]},
    )
    add("prompt of mixed types", COMPLETIONS, {**_completion(model), "prompt": ["a", 1]})

    # -- values out of range, huge numbers -----------------------------------------------------
    out_of_range = {
        "max_tokens": [-1, 10**30, 2**63, 1e308],
        "temperature": [-1, 3, 1e308, -1e308],
        "top_p": [2, -0.5],
        "seed": [2**70, -(2**70)],
        "top_k": [-5],
        "min_p": [5],
        "n": [10**9],
        "presence_penalty": [1e300],
        "frequency_penalty": [-1e300],
    }
    for field_name, values in out_of_range.items():
        for value in values:
            add(f"chat {field_name}={value!r:.20}", CHAT, {**_chat(model), field_name: value})
    add("temperature 1e999 (inf)", CHAT, _json(_chat(model))[:-1] + b', "temperature": 1e999}')
    add(
        "max_tokens with 5000 digits",
        CHAT,
        _json(_chat(model))[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}",
    )
    add("token id beyond the vocabulary", COMPLETIONS, {**_completion(model), "prompt": [10**12]})
    add("negative token id", COMPLETIONS, {**_completion(model), "prompt": [-1]})
    add("five stop strings", CHAT, {**_chat(model), "stop": ["a", "b", "c", "d", "e"]})
    add("logit_bias huge key", CHAT, {**_chat(model), "logit_bias": {"9" * 400: 1}})

    # -- deep nesting --------------------------------------------------------------------------
    for depth in (100, 1000, 100_000):
        add(
            f"messages nested {depth} deep",
            CHAT,
            f'{{"model": "{model}", "messages": {_nested_list(depth)}}}'.encode(),
        )
        add(
            f"unknown field nested {depth} deep",
            CHAT,
            _json(_chat(model))[:-1] + b', "extra": ' + _nested_object(depth).encode() + b"}",
        )
    add(
        "prompt nested deep",
        COMPLETIONS,
        f'{{"model": "{model}", "prompt": {_nested_list(50_000)}}}'.encode(),
    )
    add(
        "content nested deep",
        CHAT,
        (
            f'{{"model": "{model}", "messages": [{{"role": "user", "content": {_nested_list(20_000)}}}]}}'
        ).encode(),
    )

    # -- megabyte strings ----------------------------------------------------------------------
    mega = "x" * MIB
    add("megabyte model name", CHAT, {**_chat(model), "model": mega})
    add("megabyte unknown field name", CHAT, {**_chat(model), mega: 1})
    add("megabyte role", CHAT, {"model": model, "messages": [{"role": mega, "content": "hi"}]})
    add(
        "megabyte content past the context",
        CHAT,
        {"model": model, "messages": [{"role": "user", "content": "word " * (MIB // 5)}]},
    )
    add(
        "megabyte prompt past the context",
        COMPLETIONS,
        {**_completion(model), "prompt": "word " * (MIB // 5)},
    )
    add("megabyte integer", CHAT, _json(_chat(model))[:-1] + b', "max_tokens": ' + b"1" * MIB + b"}")
    add("body over the 8 MiB cap", CHAT, {**_chat(model), "user": "u" * (9 * MIB)})
    add("megabyte stop string list", CHAT, {**_chat(model), "stop": [mega, mega, mega, mega, mega]})

    # -- invalid UTF-8 and friends -------------------------------------------------------------
    for name, raw in {
        "0xff byte": b"\xff",
        "lone continuation byte": b"\x80",
        "truncated sequence": b"\xe2\x82",
        "overlong slash": b"\xc0\xaf",
        "encoded surrogate": b"\xed\xa0\x80",
        "beyond U+10FFFF": b"\xf4\x90\x80\x80",
    }.items():
        add(
            f"invalid UTF-8 in content: {name}",
            CHAT,
            b'{"model": "'
            + model.encode()
            + b'", "messages": [{"role": "user", "content": "a'
            + raw
            + b'b"}]}',
        )
    add("invalid UTF-8 in model", CHAT, b'{"model": "\xff\xfe", "messages": []}')
    add("invalid UTF-8 in a key", CHAT, b'{"mod\xffel": "x"}')
    add("Latin-1 body", CHAT, json.dumps(_chat("café"), ensure_ascii=False).encode("latin-1"))
    add(
        "lone surrogate escape in content",
        CHAT,
        (f'{{"model": "{model}", "messages": [{{"role": "user", "content": "\\ud800"}}]}}').encode(),
    )
    add(
        "lone surrogate escape in prompt",
        COMPLETIONS,
        f'{{"model": "{model}", "prompt": "\\udfff"}}'.encode(),
    )
    add("NUL bytes around the body", CHAT, b"\x00" + good + b"\x00")

    # -- unknown fields in odd places ----------------------------------------------------------
    add("unknown top-level field", CHAT, {**_chat(model), "temperature_": 1})
    add(
        "unknown field in a message",
        CHAT,
        {"model": model, "messages": [{"role": "user", "content": "hi", "mood": "x"}]},
    )
    add(
        "unknown field in stream_options",
        CHAT,
        {**_chat(model, stream=True), "stream_options": {"include_usage": True, "x": 1}},
    )
    add(
        "unknown field in a content part",
        CHAT,
        {
            "model": model,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "bold": True}]}],
        },
    )
    add("__proto__ field", CHAT, {**_chat(model), "__proto__": {"admin": True}})
    add("field with a space", CHAT, {**_chat(model), "model ": model})
    add("empty field name", CHAT, {**_chat(model), "": 1})
    add("unknown field on completions", COMPLETIONS, {**_completion(model), "messages": []})
    add("stream_options without stream", CHAT, {**_chat(model), "stream_options": {"include_usage": True}})

    # -- the wrong place -----------------------------------------------------------------------
    add("unknown model", CHAT, _chat("no-such-model"))
    add("path traversal as model", CHAT, _chat("../../../../etc/passwd"))
    add("absolute path as model", COMPLETIONS, _completion("/etc/passwd"))
    add("gguf path as model", CHAT, _chat("/tmp/model.gguf"))
    add("hub id as model", CHAT, _chat("meta-llama/Llama-2-7b-chat-hf"))
    cases.append(Malformed("GET on a POST route", CHAT, b"", method="GET"))
    cases.append(Malformed("PUT on a POST route", COMPLETIONS, good, method="PUT"))
    cases.append(Malformed("unknown route", "/v1/engines/x/completions", good))
    cases.append(Malformed("traversal in the path", "/v1/../../etc/passwd", b"", method="GET"))
    cases.append(Malformed("model id path traversal", "/v1/models/..%2F..%2Fetc%2Fpasswd", b"", method="GET"))
    return cases
