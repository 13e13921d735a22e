"""Server settings: one pydantic-settings model fed by ATENEA_* environment variables and the CLI."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ATENEA_"

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    """Everything `atenea serve` can be told. Each field is also the env var ATENEA_<FIELD>."""

    # env_ignore_empty: `ATENEA_MAX_MODEL_LEN=` in a compose file means "unset", not "".
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore")

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    model: str = Field(
        "smollm2-135m-instruct",
        description="model to serve: a built-in name, a local Hugging Face model folder or a .gguf file",
    )
    served_model_name: str | None = Field(
        None, description="the model id clients send and /v1/models lists; unset: derived from --model"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: on CPU fp16 weights with fp32 arithmetic, on CUDA bfloat16; "
        "float32 keeps full-precision weights",
    )
    max_num_seqs: int = Field(64, ge=1, description="sequences decoded together at most")
    max_model_len: int | None = Field(
        None, ge=1, description="context window in tokens; unset: the model's own"
    )
    max_num_batched_tokens: int = Field(
        512, ge=1, description="tokens per engine step; bounds a prefill chunk"
    )
    kv_cache_memory_gib: float | None = Field(
        None, gt=0, description="KV cache size in GiB; unset: 1 GiB on CPU, free GPU memory on CUDA"
    )
    log_level: LogLevel = Field("info", description="logging level")


def get_settings() -> Settings:
    """Fresh settings from the environment; the running app keeps its own copy on app.state."""
    return Settings()
