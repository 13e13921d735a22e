"""The narrow interface the HTTP layer uses, and the plain dataclasses that cross it.

Nothing here imports torch at module level, so `app` can type against these names cheaply.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS token, stop token id, or stop string
    LENGTH = "length"  # max_tokens reached or the context window is full
    ABORT = "abort"  # the caller went away or asked to stop
    ERROR = "error"  # the engine failed this request; `RequestOutput.error` says why


class ConstraintKind(enum.Enum):
    JSON_OBJECT = "json_object"  # any JSON object
    JSON_SCHEMA = "json_schema"  # `Constraint.spec` is a JSON schema (serialised)
    LARK = "lark"  # `Constraint.spec` is a Lark grammar (llguidance's dialect)


@dataclass(frozen=True)
class Constraint:
    """A grammar every output of the request must follow (constrained decoding)."""

    kind: ConstraintKind
    spec: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the sampler and the stop logic.

    `temperature == 0` means greedy. `top_k is None`, `top_p == 1` and `min_p == 0` disable
    those filters. `max_tokens is None` means "until the context window is full".

    `n` samples share the prompt (its KV blocks are computed once). Penalties follow OpenAI:
    `presence_penalty` is subtracted once from every token already generated, `frequency_penalty`
    once per occurrence; `repetition_penalty` (the CTRL/transformers/vLLM extension) divides
    positive and multiplies negative logits of every token seen in the prompt or output.
    `logit_bias` maps token ids to values added to their logits. `logprobs` asks for the sampled
    token's log-probability plus that many alternatives; `prompt_logprobs` the same for every
    prompt token after the first.
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    constraint: Constraint | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One output (or prompt) token with its log-probability and the most likely alternatives.

    `token` is the text this token added to the output, so the tokens of a choice concatenate to
    its text; a token that ends in the middle of a character adds "" and the one completing it
    adds the whole character. `bytes` are the token's own bytes. `logprob` is None only for the
    first prompt token, which nothing predicts.
    """

    token_id: int
    token: str
    bytes: bytes
    logprob: float | None
    top: tuple[TopLogprob, ...] = ()


@dataclass
class RequestOutput:
    """One increment of a request's output. The last one has `finished=True`."""

    request_id: str
    text: str  # text added since the previous output (never a partial UTF-8 character)
    token_ids: list[int]  # tokens added since the previous output
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far
    error: str | None = None
    index: int = 0  # which of the request's `n` samples this belongs to
    logprobs: list[TokenLogprob] | None = None  # for the tokens whose text `text` carries
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first output, when asked for


@dataclass(frozen=True)
class ModelInfo:
    id: str  # the served model name
    max_model_len: int
    created: int  # unix time the model was loaded
    owned_by: str = "atenea"
    vocab_size: int = 0  # token ids are in [0, vocab_size)


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    kv_blocks_total: int
    kv_blocks_free: int
    steps: int  # engine steps run since start
    tokens_generated: int  # sampled tokens since start
    prefix_cache_queried_tokens: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hit_tokens: int = 0  # of those, tokens whose K/V were reused
    step_running_s: float = 0.0  # how long the step now running has run (0 between steps)


class EngineError(Exception):
    """Base of the errors the engine raises for a request the client got wrong."""

    code = "invalid_request_error"
    param: str | None = None


class ContextLengthExceeded(EngineError):
    code = "context_length_exceeded"

    def __init__(self, message: str, param: str | None = "messages") -> None:
        super().__init__(message)
        self.param = param


class ChatTemplateError(EngineError):
    code = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "messages"


class InvalidParameter(EngineError):
    """A sampling parameter the model cannot honour (a token id outside the vocabulary, a schema
    the grammar engine refuses)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class InvalidPrompt(EngineError):
    def __init__(self, message: str, param: str | None = "prompt") -> None:
        super().__init__(message)
        self.param = param


class ToolChoice(enum.Enum):
    NONE = "none"  # no tools, or the client forbade calling them
    AUTO = "auto"  # the model decides
    REQUIRED = "required"  # at least one call, to any tool (enforced by a grammar)
    NAMED = "named"  # a call to one given function (enforced by a grammar)


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None  # a JSON schema for the arguments object

    def as_function(self) -> dict[str, object]:
        """OpenAI's function object, as chat templates and prompts show it."""
        function: dict[str, object] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters or {"type": "object", "properties": {}}
        return function


@dataclass
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str
    extra: dict[str, object] = field(default_factory=dict)


class EngineClient(Protocol):
    """What `app` needs from the runtime. `AsyncEngine` implements it; tests may fake it."""

    @property
    def model_info(self) -> ModelInfo: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] | None = None
    ) -> list[int]:
        """Chat template -> prompt token ids, with the tools the model may call. Raises
        ChatTemplateError."""
        ...

    def validate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Raises ContextLengthExceeded / InvalidPrompt before any work is queued."""
        ...

    def generate(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Streams outputs; closing the iterator early aborts the request."""
        ...

    def abort(self, request_id: str) -> None: ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One mean-pooled, L2-normalised embedding per token-id input."""
        ...

    def stats(self) -> EngineStats: ...

    def is_alive(self) -> bool: ...


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]  # one unit-length vector per input, in order
    prompt_tokens: int  # tokens embedded, counted with the embedding model's own tokenizer


class EncoderClient(Protocol):
    """A dedicated embedding model (`--embedding-model`). `AsyncEncoder` implements it; tests may
    fake it."""

    @property
    def info(self) -> ModelInfo: ...

    def encode(self, text: str) -> list[int]:
        """The model's token ids for `text`, its special tokens included (as `embed` counts them).
        Cheap enough to call on the event loop."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Ids in [0, info.vocab_size) -> text, special tokens skipped."""
        ...

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """Strings are tokenized with the model's tokenizer; token-id inputs are used as given.
        Raises ContextLengthExceeded / InvalidPrompt for an input the model cannot take."""
        ...

    def is_alive(self) -> bool: ...
