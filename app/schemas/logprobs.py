"""Log-probabilities in OpenAI's two shapes: chat's per-token objects and the legacy parallel lists."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from model_runtime import TokenLogprob


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=e.token,
                logprob=e.logprob if e.logprob is not None else 0.0,
                bytes=list(e.bytes),
                top_logprobs=[
                    TopLogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in e.top
                ],
            )
            for e in entries
        ]
    )


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


def completion_logprobs(entries: Sequence[TokenLogprob], start: int = 0) -> CompletionLogprobs:
    """`start`: offset of the first entry's text in the choice's text (streams continue from it)."""
    offsets = []
    for e in entries:
        offsets.append(start)
        start += len(e.token)
    return CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[
            {t.token: t.logprob for t in e.top} if e.logprob is not None else None for e in entries
        ],
        text_offset=offsets,
    )
