"""POST /v1/images/generations, and GET /v1/images/files/{name} for the images behind `url` answers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import ImagesDep, ImageStoreDep
from app.errors import APIError
from app.schemas.common import ErrorResponse
from app.schemas.images import ImageGenerationRequest, ImagesResponse
from app.services import images as image_service
from app.services.models import embedding_model_named, embeddings_only

router = APIRouter(prefix="/v1", tags=["images"])


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def create_images(
    body: ImageGenerationRequest, request: Request, images: ImagesDep, store: ImageStoreDep
) -> Response:
    if embedding_model_named(getattr(request.app.state, "encoder", None), body.model or "") is not None:
        raise embeddings_only(body.model or "")
    engine = getattr(request.app.state, "engine", None)
    return await image_service.create_images(body, images, engine, store, request)


@router.get(
    "/images/files/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, 404: {}},
)
async def image_file(name: str, store: ImageStoreDep) -> Response:
    image = store.get(name)
    if image is None:
        raise APIError(404, "No such image: it never existed or has expired (images are kept one hour).",
                       code="not_found")  # fmt: skip
    return Response(
        image.data,
        media_type=image.media_type,
        headers={"Cache-Control": f"private, max-age={store.seconds_left(image)}"},
    )
