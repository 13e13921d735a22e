"""Server settings: one pydantic-settings model fed by ATENEA_* environment variables and the CLI."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ATENEA_"

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LogFormat = Literal["text", "json"]

# Fields whose values never appear in help texts or logs.
SECRET_FIELDS = frozenset({"api_key"})


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
    max_num_batched_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens per engine step; bounds a prefill chunk; unset: 512 on CPU, 8192 on CUDA",
    )
    kv_cache_memory_gib: float | None = Field(
        None, gt=0, description="KV cache size in GiB; unset: 1 GiB on CPU, free GPU memory on CUDA"
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="CUDA: fraction of the GPU's memory for weights, activations and KV cache",
    )
    enforce_eager: bool = Field(False, description="CUDA: run decode steps eagerly, without CUDA graphs")
    overlap_steps: bool | None = Field(
        None,
        description="launch each step before the host reads the previous step's tokens, hiding the "
        "host's work behind the device's; unset: on with CUDA, off on a CPU",
    )
    engine_process: bool | None = Field(
        None,
        description="run the engine in a process of its own, so the HTTP layer and the engine's host "
        "work never wait on each other's Python; unset: on with CUDA, off on a CPU",
    )
    image_model: str = Field(
        "atenea-shapes",
        description="image model for /v1/images/generations: a built-in name, a local diffusers "
        "pipeline folder or a .safetensors checkpoint; 'none' serves no images",
    )
    image_max_batch_size: int = Field(
        16, ge=1, description="images generated together in one pipeline call at most"
    )
    image_cpu_threads: int | None = Field(
        None, ge=1, description="CPU threads for image generation; unset: half the cores"
    )
    embedding_model: str | None = Field(
        None,
        description="dedicated model for /v1/embeddings: a local Hugging Face folder of an encoder "
        "(BERT, RoBERTa, XLM-R, MPNet; sentence-transformers pooling honoured) with safetensors "
        "weights; unset: /v1/embeddings embeds with --model",
    )
    embedding_model_name: str | None = Field(
        None,
        description="the model id clients send for --embedding-model; unset: the folder's name, lower-cased",
    )
    log_level: LogLevel = Field("info", description="logging level")
    log_format: LogFormat = Field("text", description="log lines as text or as one JSON object each")
    log_content: bool = Field(
        False, description="also log request bodies and generated text (off: never logged)"
    )

    # Access. NoDecode: ATENEA_API_KEY is a plain key (or comma-separated keys), not JSON.
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="key clients must send as `Authorization: Bearer KEY` (repeatable); unset: no auth",
    )
    api_key_file: str | None = Field(None, description="file with one API key per line (# comments)")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (repeatable); unset: CORS off"
    )
    max_request_body_bytes: int = Field(
        8 * 2**20, ge=1, description="larger request bodies get 413 before they are parsed"
    )

    # Load.
    max_queued_requests: int = Field(
        256, ge=0, description="requests that may wait beyond --max-num-seqs; more get 429"
    )
    max_queued_tokens: int = Field(
        1_000_000, ge=1, description="prompt + max_tokens of all admitted requests; more get 429"
    )
    request_timeout: float | None = Field(
        None, gt=0, description="seconds a request may run before it ends with an error; unset: no limit"
    )
    shutdown_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds in-flight requests get to finish"
    )
    engine_stall_timeout: float = Field(
        120.0, gt=0, description="seconds the engine may spend on one step before the server exits"
    )

    @field_validator("api_key", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def get_settings() -> Settings:
    """Fresh settings from the environment; the running app keeps its own copy on app.state."""
    return Settings()
