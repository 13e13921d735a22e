"""What a request must satisfy before it is queued, given only the model's limits, so that whichever
side of a process boundary receives it can refuse it with the client's error."""

from __future__ import annotations

from collections.abc import Sequence

from model_runtime.api import (
    ContextLengthExceeded,
    InvalidParameter,
    InvalidPrompt,
    ModelInfo,
    SamplingParams,
)
from model_runtime.grammar import grammar_of


def check_request(prompt_token_ids: Sequence[int], params: SamplingParams, model: ModelInfo) -> None:
    if not prompt_token_ids:
        raise InvalidPrompt("the prompt is empty")
    # min/max run in C: validation happens on the event loop and again where the engine runs.
    if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= model.vocab_size:
        raise InvalidPrompt(f"prompt token ids must be in [0, {model.vocab_size})")
    wanted = len(prompt_token_ids) + (params.max_tokens or 0)
    if len(prompt_token_ids) >= model.max_model_len or wanted > model.max_model_len:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.max_model_len} tokens. However, you "
            f"requested {wanted} tokens ({len(prompt_token_ids)} in the messages, "
            f"{params.max_tokens or 0} in the completion). Please reduce the length of the "
            "messages or completion."
        )
    if params.logit_bias:
        bad = [t for t, _ in params.logit_bias if not 0 <= t < model.vocab_size]
        if bad:
            raise InvalidParameter(
                f"logit_bias: token id {bad[0]} is not in this model's vocabulary [0, {model.vocab_size}).",
                "logit_bias",
            )
    if params.constraint is not None:
        grammar_of(params.constraint)


def check_embed_inputs(inputs: Sequence[Sequence[int]], model: ModelInfo) -> None:
    for ids in inputs:
        if not ids:
            raise InvalidPrompt("an input is empty", param="input")
        if min(ids) < 0 or max(ids) >= model.vocab_size:
            raise InvalidPrompt(f"token ids must be in [0, {model.vocab_size})", param="input")
        if len(ids) > model.max_model_len:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {model.max_model_len} tokens; an input has "
                f"{len(ids)}.",
                param="input",
            )
