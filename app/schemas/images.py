"""/v1/images/generations: OpenAI's CreateImageRequest and ImagesResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import RequestModel
from model_runtime.images import ImageParams, ImageSize

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageGenerationRequest(RequestModel):
    prompt: str
    model: str | None = None  # None: the server's (first) image model
    n: int | None = Field(None, ge=1, le=10)
    size: str | None = None  # "WxH" or "auto"; checked against the model's sizes
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    user: str | None = None
    # Extensions, as other local servers name them.
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None

    def to_image_params(self, size: ImageSize | None) -> ImageParams:
        return ImageParams(
            prompt=self.prompt,
            n=self.n or 1,
            size=size,
            steps=self.num_inference_steps,
            seed=self.seed,
            negative_prompt=self.negative_prompt,
        )


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat | None = None
