"""Request fields and rules shared by chat completions and legacy completions.

Every field of OpenAI's request schemas falls in one of three groups:

* implemented: mapped onto `SamplingParams` by `GenerationRequest.sampling_params` (and the
  endpoints' `to_sampling_params`);
* informational: accepted whatever its value, because it changes nothing a client can observe from
  a self-hosted server (`user`, `metadata`, `store`, `service_tier`, prompt-cache hints, ...);
* not yet: accepted only at its neutral value, otherwise a 400 that names the parameter (`NOT_YET`),
  so a client never gets an answer that silently ignored what it asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import RequestModel, StreamOptions
from model_runtime import Constraint, SamplingParams

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4  # OpenAI's limit


@dataclass(frozen=True)
class NotYet:
    """A parameter we do not implement yet: the values that mean "off", and how they read."""

    neutral: str
    accepts: Callable[[Any], bool]


# Shared by both endpoints. Keys are field names; the fields themselves are declared below.
COMMON_NOT_YET: dict[str, NotYet] = {}

LOGIT_BIAS_LIMIT = 100  # OpenAI's range: -100 (ban) .. 100 (force)


def unsupported(param: str, neutral: str) -> PydanticCustomError:
    """The error for a not-yet parameter. The message is built here: pydantic would otherwise
    treat braces in it as placeholders."""
    return PydanticCustomError(
        "unsupported_parameter",
        f"'{param}' is not supported yet by this server; omit it or send {neutral}.",
    )


class GenerationRequest(RequestModel):
    """Fields common to /v1/chat/completions and /v1/completions."""

    NOT_YET: ClassVar[dict[str, NotYet]] = COMMON_NOT_YET

    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    # 0 is allowed, as OpenAI allows it: nucleus sampling with p -> 0 keeps only the top token.
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    user: str | None = None

    # vLLM's extensions, under vLLM's names and meanings.
    top_k: int | None = Field(None, ge=-1)  # -1, 0 and null: off
    min_p: float | None = Field(None, ge=0, le=1)
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=10)  # 1 and null: off

    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, int | float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias: dict[str, int | float] | None) -> dict[str, int | float] | None:
        for key, value in (bias or {}).items():
            if not key.isdigit():
                raise PydanticCustomError(
                    "value_error", f"Keys must be token ids (non-negative integers as strings), got {key!r}."
                )
            if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
                raise PydanticCustomError(
                    "value_error",
                    f"Bias values must be between -{LOGIT_BIAS_LIMIT} and {LOGIT_BIAS_LIMIT}, got {value} "
                    f"for token {key}.",
                )
        return bias

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else (stop or [])
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise PydanticCustomError("too_long", f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.")
        if any(s == "" for s in sequences):
            raise PydanticCustomError("value_error", "Stop sequences must not be empty strings.")
        return stop

    @field_validator("stream_options")
    @classmethod
    def _check_stream_options(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        # As OpenAI: stream options on a non-streamed request are a mistake worth reporting.
        if options is not None and not info.data.get("stream"):
            raise PydanticCustomError(
                "value_error", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        return options

    @field_validator(
        # chat only
        "functions",
        "function_call",
        "audio",
        "modalities",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "moderation",
        # legacy only
        "best_of",
        "suffix",
        check_fields=False,
    )
    @classmethod
    def _check_not_yet(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        rule = cls.NOT_YET.get(info.field_name)
        if rule is not None and not rule.accepts(value):
            raise unsupported(info.field_name, rule.neutral)
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_params(
        self,
        max_tokens: int | None,
        logprobs: int | None = None,
        constraint: Constraint | None = None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        """The one place where request fields become runtime parameters; the endpoints add what
        only they have (logprobs, response formats)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0.0:
            temperature, top_p = 0.0, 1.0
        stop = self.stop if isinstance(self.stop, list) else [self.stop] if self.stop else []
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=self.top_k if self.top_k is not None and self.top_k > 0 else None,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=bool(self.ignore_eos),
            n=self.n or 1,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            constraint=constraint,
        )
