"""A deterministic EngineClient for HTTP tests: no model, no torch.

Tokens are whitespace-separated words. The reply repeats the prompt's words in a loop (so different
prompts give different answers), one word per output, and honours max_tokens, stop strings, stop
token ids, ignore_eos and the context window. It can be told to fail mid-stream, to raise, or to go
slowly, and it records what it was asked and what was aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from model_runtime import (
    ChatMessage,
    ChatTemplateError,
    ContextLengthExceeded,
    EngineStats,
    FinishReason,
    InvalidParameter,
    InvalidPrompt,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
    ToolSpec,
    TopLogprob,
)
from model_runtime.grammar import grammar_of

EOS = "<eos>"
FAKE_VOCAB_SIZE = 50_000  # what logit_bias ids are checked against


@dataclass
class GenerateCall:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class FakeEngine:
    model_id: str = "fake-model"
    max_model_len: int = 128
    delay: float = 0.0  # seconds before each output
    fail_after: int | None = None  # tokens before a FinishReason.ERROR output
    raise_after: int | None = None  # tokens before generate() raises
    abort_after: int | None = None  # tokens before a FinishReason.ABORT output
    fail_word: str | None = None  # prompts containing this word fail at their first token
    alive: bool = True
    words: list[str] = field(default_factory=lambda: [EOS])
    calls: list[GenerateCall] = field(default_factory=list)
    rendered: list[list[ChatMessage]] = field(default_factory=list)
    rendered_tools: list[list[ToolSpec] | None] = field(default_factory=list)
    script: str | None = None  # when set, every reply is this text, one character per token
    aborted: list[str] = field(default_factory=list)  # engine.abort(request_id)
    closed_early: list[str] = field(default_factory=list)  # generator closed before finishing
    tokens_sent: dict[str, int] = field(default_factory=dict)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id=self.model_id,
            max_model_len=self.max_model_len,
            created=1_700_000_000,
            vocab_size=FAKE_VOCAB_SIZE,
        )

    def _id(self, word: str) -> int:
        if word not in self.words:
            self.words.append(word)
        return self.words.index(word)

    def encode(self, text: str) -> list[int]:
        return [self._id(word) for word in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] if i < len(self.words) else f"<{i}>" for i in ids)

    def render_chat(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] | None = None
    ) -> list[int]:
        self.rendered.append(list(messages))
        self.rendered_tools.append(list(tools) if tools is not None else None)
        if any("{%" in m.content for m in messages):
            raise ChatTemplateError("the chat template failed to render")
        return self.encode(" ".join(f"{m.role}: {m.content}" for m in messages))

    def validate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        if any(t >= len(self.words) for t in prompt_token_ids):
            raise InvalidPrompt("token id out of range", param="prompt")
        if len(prompt_token_ids) + (params.max_tokens or 0) > self.max_model_len:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(prompt_token_ids)} and max_tokens is {params.max_tokens}."
            )
        if params.constraint is not None:
            grammar_of(params.constraint)  # the real engine's check: a bad schema is a 400
        if any(not 0 <= t < FAKE_VOCAB_SIZE for t, _ in params.logit_bias):
            raise InvalidParameter("logit_bias: token id out of the vocabulary", "logit_bias")

    def reply_ids(self, prompt_ids: Sequence[int]) -> list[int]:
        """What generate() would produce without limits: the prompt's words, looped."""
        source = [t for t in prompt_ids if self.words[t] != EOS] or [self._id("hello")]
        return [source[i % len(source)] for i in range(self.max_model_len)]

    def plan(self, prompt: list[int], params: SamplingParams) -> tuple[list[tuple[str, int]], FinishReason]:
        """The (text, token) outputs a request gets and why it ends, decided up front so that a
        stop string is cut exactly and never leaks, as the real engine guarantees."""
        budget = self.max_model_len - len(prompt)
        limit = budget if params.max_tokens is None else min(params.max_tokens, budget)
        pieces: list[tuple[str, int]] = []
        reason = FinishReason.LENGTH
        for n, token in enumerate(self.reply_ids(prompt)[:limit], start=1):
            word = self.words[token]
            if token in params.stop_token_ids or (word == EOS and not params.ignore_eos):
                reason = FinishReason.STOP
                break
            pieces.append((word if n == 1 else " " + word, token))
        if self.script is not None:
            pieces = [(char, self._id(char)) for char in self.script[:limit]]
            reason = FinishReason.STOP if len(self.script) <= limit else FinishReason.LENGTH
        full = "".join(piece for piece, _ in pieces)
        cut = min((i for stop in params.stop if (i := full.find(stop)) >= 0), default=None)
        if cut is None:
            return pieces, reason
        kept: list[tuple[str, int]] = []
        offset = 0
        for piece, token in pieces:
            if offset + len(piece) > cut:
                if cut > offset:
                    kept.append((piece[: cut - offset], token))
                break
            kept.append((piece, token))
            offset += len(piece)
        return kept, FinishReason.STOP

    async def generate(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """The n samples of a request are the same reply, interleaved token by token."""
        prompt = list(prompt_token_ids)
        self.calls.append(GenerateCall(request_id, prompt, params))
        pieces, reason = self.plan(prompt, params)
        self.tokens_sent[request_id] = 0
        finished = False
        try:
            for n, (piece, token) in enumerate(pieces, start=1):
                await asyncio.sleep(self.delay)
                if self.raise_after is not None and n > self.raise_after:
                    raise RuntimeError("fake engine exploded")
                fails = self.fail_word is not None and self.fail_word in self.decode(prompt).split()
                if fails or (self.fail_after is not None and n > self.fail_after):
                    finished = True
                    yield self._final(
                        request_id, prompt, n - 1, FinishReason.ERROR, error="fake engine failure"
                    )
                    return
                if self.abort_after is not None and n > self.abort_after:
                    finished = True
                    yield self._final(request_id, prompt, n - 1, FinishReason.ABORT)
                    return
                self.tokens_sent[request_id] = n
                # The last token of a max_tokens finish carries the finish itself (engines do both).
                last = n == len(pieces) and reason is FinishReason.LENGTH
                for index in range(params.n):
                    finished = last and index == params.n - 1
                    yield RequestOutput(
                        request_id=request_id,
                        text=piece,
                        token_ids=[token],
                        finished=last,
                        finish_reason=reason if last else None,
                        prompt_tokens=len(prompt),
                        completion_tokens=n,
                        index=index,
                        logprobs=self._logprobs(piece, token, params),
                        prompt_logprobs=self._prompt_logprobs(prompt, params) if n == 1 else None,
                    )
            if not finished:
                for index in range(params.n):
                    finished = index == params.n - 1
                    out = self._final(request_id, prompt, len(pieces), reason)
                    out.index = index
                    out.logprobs = [] if params.logprobs is not None else None
                    yield out
        finally:
            if not finished:
                self.closed_early.append(request_id)

    def _prompt_logprobs(self, prompt: list[int], params: SamplingParams) -> list[TokenLogprob] | None:
        """Prompt words (space-joined as `decode` joins them) at -1, the first without a logprob."""
        if params.prompt_logprobs is None:
            return None
        entries = []
        for i, token in enumerate(prompt):
            text = self.words[token] if i == 0 else " " + self.words[token]
            entries.append(TokenLogprob(token, text, text.encode(), None if i == 0 else -1.0))
        return entries

    @staticmethod
    def _logprobs(piece: str, token: int, params: SamplingParams) -> list[TokenLogprob] | None:
        """-0.5 for the reply's token, then alternatives at -1, -2, ..."""
        if params.logprobs is None:
            return None
        top = (TopLogprob(token, piece, piece.encode(), -0.5),) + tuple(
            TopLogprob(1000 + k, f"alt{k}", f"alt{k}".encode(), -1.0 - k) for k in range(params.logprobs - 1)
        )
        return [TokenLogprob(token, piece, piece.encode(), -0.5, top[: params.logprobs])]

    @staticmethod
    def _final(
        request_id: str,
        prompt: list[int],
        completion_tokens: int,
        reason: FinishReason,
        text: str = "",
        error: str | None = None,
    ) -> RequestOutput:
        return RequestOutput(
            request_id=request_id,
            text=text,
            token_ids=[],
            finished=True,
            finish_reason=reason,
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
            error=error,
        )

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Unit vectors of 4 components that depend on the ids (equal inputs, equal vectors)."""
        vectors = []
        for ids in inputs:
            raw = [float(1 + sum(ids) % 7), float(len(ids)), 1.0, float(ids[0] % 3)]
            norm = sum(x * x for x in raw) ** 0.5
            vectors.append([x / norm for x in raw])
        return vectors

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=0, running=0, kv_blocks_total=0, kv_blocks_free=0, steps=0, tokens_generated=0
        )

    def is_alive(self) -> bool:
        return self.alive
