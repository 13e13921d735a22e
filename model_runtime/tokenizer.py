"""Text in and out of the model: chat templates (sandboxed Jinja) and the tokenizer wrapper.

Chat templates follow Hugging Face's conventions (`transformers.utils.chat_template_utils`) so a
model folder's template renders here exactly as `apply_chat_template` renders it. Templates come
from downloaded model folders, so they run in Jinja's immutable sandbox with HF's hardening.
The streaming side (incremental detokenizer, stop strings) lives in `detokenizer.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model_runtime.api import ChatMessage, ChatTemplateError, InvalidPrompt, ToolSpec
from model_runtime.detokenizer import ByteLevelDetokenizer, Detokenizer, IncrementalDetokenizer, StopMatcher
from model_runtime.tool_calls import template_supports_tools, tools_for_template, with_fallback_tools

__all__ = ["CHATML_TEMPLATE", "ChatTemplate", "IncrementalDetokenizer", "StopMatcher", "Tokenizer"]

logger = logging.getLogger(__name__)

# The fallback for tokenizers that ship no chat template: ChatML, the most common convention
# (SmolLM, Qwen, many fine-tunes). A base model without a template was never trained on any chat
# format, so any choice is a guess; ChatML at least keeps roles unambiguous.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Names a message's reasoning may arrive under; HF copies it to all of them (templates differ).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplate:
    """A chat template compiled once; `render` turns messages into the prompt text.

    `special_tokens` are the variables HF passes next to `messages` (`bos_token`,
    `eos_token`, ... as strings). Every failure, at compile or render time, is a ChatTemplateError
    carrying the template's own message: a template rejecting a conversation (`raise_exception`)
    is the client's problem, not the server's.
    """

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        self.source = source
        self._special_tokens = dict(special_tokens or {})
        try:
            self._template = _sandbox().from_string(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from exc

    @property
    def supports_tools(self) -> bool:
        return template_supports_tools(self.source)

    def render(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        tools: Sequence[ToolSpec] | None = None,
    ) -> str:
        """Tools go to a template that knows them; for one that does not, they are written into
        the conversation (`tool_calls.with_fallback_tools`)."""
        if not messages:
            raise ChatTemplateError("messages must contain at least one message")
        template_tools = None
        if not self.supports_tools:
            messages = with_fallback_tools(messages, tools or [])
        elif tools:
            template_tools = tools_for_template(tools)
        variables = {
            **self._special_tokens,
            "messages": [_message_dict(m) for m in messages],
            "tools": template_tools,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._template.render(**variables)
        except jinja2.TemplateError as exc:  # raise_exception, undefined values, sandbox violations
            raise ChatTemplateError(str(exc)) from exc
        except Exception as exc:  # a template bug triggered by this conversation (TypeError, ...)
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """The dict a template sees, built as HF builds it from an OpenAI-style message."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    for key, value in message.extra.items():
        # HF drops None values: templates test `'key' in message`, not `message.key is none`.
        if key not in data and value is not None:
            data[key] = _plain(value)
    reasoning = next((data[k] for k in _REASONING_FIELDS if k in data), None)
    if reasoning is not None:
        data = {"thinking": reasoning, **data, "reasoning_content": reasoning}
    return data


def _plain(value: Any) -> Any:
    """JSON-like data only: objects with methods must not reach the sandbox."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (str, int, float):  # subclasses (enums, ...) carry extra methods: strip them
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


def _sandbox() -> ImmutableSandboxedEnvironment:
    """The environment HF compiles chat templates in, with the same globals and filters."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change the prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates without exposing the `dict` type itself (HF's hardening)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore attributes, which could reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own trick: `self` may be a key
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
            )


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: HF marks assistant text for training masks with it.

    Serving has no use for the mask, but templates that contain the tag must still compile, so
    the block just renders its body.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


class Tokenizer:
    """A model folder's tokenizer: prompt encoding, chat rendering, decoding and EOS ids.

    It holds no mutable state after construction, so the event loop (encode, render_chat) and
    the engine thread (detokenizers) may use it at the same time.
    """

    def __init__(
        self,
        hf_tokenizer: Any,
        chat_template: ChatTemplate,
        eos_token_ids: frozenset[int],
        id_limit: int | None = None,
    ) -> None:
        self.hf_tokenizer = hf_tokenizer
        # A random-weight model of a real shape borrows the default model's tokenizer, which can
        # have more tokens than the shape's vocabulary (49,152 against Llama 2's 32,000). Its text
        # means nothing, so encoded ids past the vocabulary are folded into it: a chat request to
        # `random:llama2-7b` runs instead of failing the prompt check.
        self.id_limit = id_limit
        self.chat_template = chat_template
        self.eos_token_ids = eos_token_ids
        self.vocab_size: int = len(hf_tokenizer)
        self._backend = hf_tokenizer.backend_tokenizer
        # transformers disables these per call; the backend is ours, so do it once and never
        # mutate it again (a mutation during another thread's encode would fail).
        self._backend.no_truncation()
        self._backend.no_padding()
        # Exactly the ids `decode(..., skip_special_tokens=True)` skips.
        self.special_ids = frozenset(
            i for i, token in self._backend.get_added_tokens_decoder().items() if token.special
        )
        self._decode = partial(self._backend.decode, skip_special_tokens=True)
        self._byte_level = type(self._backend.decoder).__name__ == "ByteLevel"
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self.token_bytes = lru_cache(maxsize=65536)(self._token_bytes)

    @classmethod
    def from_folder(cls, path: str | Path) -> Tokenizer:
        from transformers import AutoTokenizer  # heavy; only needed when a model loads

        folder = Path(path)
        hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if getattr(hf_tokenizer, "backend_tokenizer", None) is None:
            raise ValueError(f"{folder}: no fast (tokenizers) tokenizer could be loaded")
        special_tokens = dict(hf_tokenizer.special_tokens_map)
        chat_template = ChatTemplate(_template_source(hf_tokenizer, folder), special_tokens)
        eos = _folder_eos_ids(folder)
        if hf_tokenizer.eos_token_id is not None:
            eos.add(hf_tokenizer.eos_token_id)
        return cls(
            hf_tokenizer, chat_template, frozenset(eos), _random_shape_vocab(folder, len(hf_tokenizer))
        )

    def encode(self, text: str, add_special_tokens: bool = True, param: str = "prompt") -> list[int]:
        """Prompt text -> ids. BOS is added by default, as `tokenizer(text)` and vLLM's
        completions endpoint do: Llama-family models degrade badly without it."""
        _check_encodable(text, param)
        ids = self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        if self.id_limit is not None:
            return [i % self.id_limit for i in ids]
        return ids

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        tools: Sequence[ToolSpec] | None = None,
    ) -> list[int]:
        """Messages -> prompt ids, as `apply_chat_template(tokenize=True)`: the template writes
        BOS itself, so the rendered text is encoded without special tokens (no double BOS)."""
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        return self.encode(text, add_special_tokens=False, param="messages")

    def decode(self, token_ids: Sequence[int]) -> str:
        """Ids -> text, special tokens skipped and no "clean-up" of spaces (it corrupts text like
        code, transformers ignores it for BPE, and streaming could not reproduce it)."""
        return self._decode(list(token_ids))

    def _token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (special tokens: their own spelling)."""
        piece = self._backend.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.special_ids:
            return piece.encode()
        if self._byte_level:  # GPT-2 style: every byte is spelled as one printable character
            try:
                return bytes(self._byte_decoder[c] for c in piece)
            except KeyError:  # an added token spelled in plain text, which the decoder keeps as is
                return piece.encode()
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # byte fallback
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()  # SentencePiece spells spaces as U+2581

    def token_text(self, token_id: int) -> str:
        """One token as text; a token that is part of a character reads "bytes:\\xNN..." as in
        OpenAI's logprobs."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def detokenizer(self, prompt_ids: Sequence[int] = ()) -> Detokenizer:
        """A fresh streaming decoder for one sequence that follows `prompt_ids`."""
        if self._byte_level:
            return ByteLevelDetokenizer(self.token_bytes, self.special_ids)
        return IncrementalDetokenizer(self._decode, prompt_ids, self.special_ids)


def _random_shape_vocab(folder: Path, tokenizer_size: int) -> int | None:
    """The vocabulary of a random-weight model smaller than its borrowed tokenizer, else None."""
    from model_runtime.models.random_models import has_random_weights

    if not has_random_weights(folder):
        return None
    vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
    return vocab if isinstance(vocab, int) and vocab < tokenizer_size else None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from bytes to the printable characters byte-level BPE spells them with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1)]
    printable += range(ord("\xae"), ord("\xff") + 1)
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _check_encodable(text: str, param: str) -> None:
    """JSON can carry lone UTF-16 surrogates ("\\ud800") that no tokenizer can take."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPrompt(
            f"the text is not valid Unicode: {exc.reason} at position {exc.start}", param
        ) from None


def _template_source(hf_tokenizer: Any, folder: Path) -> str:
    template = hf_tokenizer.chat_template
    if isinstance(template, dict):  # several named templates; "default" is the chat one
        template = template.get("default")
    if isinstance(template, str) and template:
        return template
    logger.warning("%s has no chat template; using ChatML", folder)
    return CHATML_TEMPLATE


def _folder_eos_ids(folder: Path) -> set[int]:
    """EOS ids the model was trained to stop on. Instruct models often list several (Llama 3:
    <|end_of_text|> and <|eot_id|>) in generation_config.json; like transformers, fall back
    to config.json when there is no generation config."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if isinstance(value, int):
                return {value}
            if isinstance(value, list):
                return {v for v in value if isinstance(v, int)}
            return set()
    return set()
