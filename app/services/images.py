"""Image generation: pick the model, check the request against it, run it, encode, answer.

The runtime hands back RGB arrays; encoding them (PNG, JPEG, WebP) happens here, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from app.errors import APIError, model_not_found, server_error
from app.image_store import ImageStore
from app.responses import client_gone
from app.schemas.images import ImageData, ImageGenerationRequest, ImagesResponse, OutputFormat
from app.services.generation import until_disconnected
from model_runtime import EngineClient
from model_runtime.images import ImageClient, ImageGenerationFailed, ImageModelInfo, ImageSize

FILES_PATH = "/v1/images/files"


def image_model(
    images: ImageClient | None, engine: EngineClient | None, requested: str | None
) -> ImageModelInfo:
    """The image model a request names (or the default one); a language model's id is a 400."""
    if engine is not None and requested is not None and requested == engine.model_info.id:
        raise APIError(
            400,
            f"The model `{requested}` is a language model and cannot generate images; "
            "use /v1/chat/completions or /v1/completions.",
            param="model",
            code="model_not_supported",
        )
    models = list(images.models) if images is not None else []
    if not models:
        if requested is None:
            raise APIError(
                400, "This server has no image model (it was started with --image-model none).", param="model"
            )
        raise model_not_found(requested)
    if requested is None:
        return models[0]
    for info in models:
        if info.id == requested:
            return info
    raise model_not_found(requested)


def requested_size(info: ImageModelInfo, size: str | None) -> ImageSize | None:
    if size is None or size == "auto":
        return None
    parsed = ImageSize.parse(size)
    if parsed is None or parsed not in info.sizes:
        valid = ", ".join(f"'{s}'" for s in info.sizes)
        raise APIError(
            400,
            f"'{size}' is not a size `{info.id}` supports. Supported sizes: {valid}, or 'auto'.",
            param="size",
            code="invalid_size",
        )
    return parsed


def refuse_unsupported(body: ImageGenerationRequest) -> None:
    """Parameters of OpenAI's spec this server cannot honour: a 400 naming each, never ignored."""
    if body.stream:
        raise APIError(400, "Streaming image generation is not supported; omit `stream`.", param="stream")
    if body.partial_images:
        raise APIError(400, "Partial images need streaming, which is not supported.", param="partial_images")
    if body.background == "transparent":
        raise APIError(400, "Transparent backgrounds are not supported.", param="background")


async def create_images(
    body: ImageGenerationRequest,
    images: ImageClient | None,
    engine: EngineClient | None,
    store: ImageStore,
    request: Request,
) -> Response:
    refuse_unsupported(body)
    info = image_model(images, engine, body.model)
    assert images is not None
    params = body.to_image_params(requested_size(info, body.size))
    images.validate(info.id, params)  # raises ImageError (a 400) before anything is queued
    created = int(time.time())
    try:
        result = await until_disconnected(request, images.generate(info.id, params))
    except ImageGenerationFailed as exc:
        raise server_error(str(exc)) from exc
    if result is None:
        return client_gone()

    output_format: OutputFormat = body.output_format or "png"
    encoded = await asyncio.to_thread(encode_all, result.images, output_format, body.output_compression)
    request.app.state.metrics.count_images(len(encoded))
    if (body.response_format or "url") == "b64_json":
        data = [
            ImageData(b64_json=base64.b64encode(blob).decode("ascii"), revised_prompt=params.prompt)
            for blob in encoded
        ]
    else:
        base = str(request.base_url).rstrip("/")
        data = [
            ImageData(
                url=f"{base}{FILES_PATH}/{store.put(blob, output_format)}", revised_prompt=params.prompt
            )
            for blob in encoded
        ]
    body_out = ImagesResponse(created=created, data=data, output_format=output_format)
    # exclude_none: an image carries `url` or `b64_json`, never the other as null.
    return Response(body_out.model_dump_json(exclude_none=True), media_type="application/json")


def encode_all(arrays: list[np.ndarray], fmt: OutputFormat, compression: int | None) -> list[bytes]:
    return [encode(a, fmt, compression) for a in arrays]


def encode(array: np.ndarray, fmt: OutputFormat, compression: int | None) -> bytes:
    """[H, W, 3] uint8 -> file bytes. `compression` (0-100, default 100) is the JPEG/WebP quality,
    as OpenAI's `output_compression`; PNG is lossless whatever it says."""
    out = io.BytesIO()
    image = Image.fromarray(array)  # [H, W, 3] uint8 is RGB
    quality = 100 if compression is None else compression
    if fmt == "png":
        image.save(out, format="PNG")
    elif fmt == "jpeg":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="WEBP", quality=quality, lossless=quality == 100)
    return out.getvalue()
