"""What the HTTP layer sees of the image runtime: the request and result dataclasses and the client
protocol. Nothing here imports torch or diffusers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model_runtime.api import EngineError


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str) -> ImageSize | None:
        """ "512x512" -> ImageSize(512, 512); anything else -> None."""
        width, sep, height = text.partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            return None
        return cls(int(width), int(height))


@dataclass(frozen=True)
class ImageModelInfo:
    id: str  # the served model name
    sizes: tuple[ImageSize, ...]  # what the model was made for; the first is the default
    default_steps: int
    max_steps: int
    created: int  # unix time the model was loaded
    owned_by: str = "atenea"

    @property
    def default_size(self) -> ImageSize:
        return self.sizes[0]


@dataclass(frozen=True)
class ImageParams:
    """One request: `n` images of one prompt. `seed` makes them reproducible: image i uses seed + i."""

    prompt: str
    n: int = 1
    size: ImageSize | None = None  # None: the model's default
    steps: int | None = None  # None: the model's default
    seed: int | None = None
    negative_prompt: str | None = None


@dataclass(frozen=True)
class ImageResult:
    images: list[np.ndarray]  # each [H, W, 3] uint8 RGB
    seeds: list[int]  # the seed each image was drawn with


class ImageError(EngineError):
    """A request the image runtime refuses; always the client's doing."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ImageGenerationFailed(Exception):
    """The pipeline failed on a request that was valid: a server fault, not the client's."""


class ImageClient(Protocol):
    """What `app` needs from the image runtime. `AsyncImageWorker` implements it."""

    @property
    def models(self) -> Sequence[ImageModelInfo]: ...

    def model(self, model_id: str) -> ImageModelInfo | None: ...

    def validate(self, model_id: str, params: ImageParams) -> None:
        """Raises ImageError for a request the model cannot serve (size, steps, prompt)."""
        ...

    async def generate(self, model_id: str, params: ImageParams) -> ImageResult:
        """Cancelling the awaiting task drops the request's pending work."""
        ...

    def is_alive(self) -> bool: ...
