"""Which model ids this server answers to: one language model, and the image models and the
dedicated embedding model beside it."""

from __future__ import annotations

from app.errors import APIError, model_not_found
from model_runtime import EncoderClient, EngineClient, ModelInfo
from model_runtime.images import ImageClient, ImageModelInfo


class ModelNotServed(APIError):
    """404 model_not_found from a language-model route. A handler of its own (see
    `app.routers.models.model_not_served`) makes it a 400 when the id names one of the image models
    or the embedding model."""

    def __init__(self, model: str) -> None:
        error = model_not_found(model)
        super().__init__(error.status_code, error.detail.message, param="model", code=error.detail.code)
        self.model = model


def served_model(engine: EngineClient, requested: str) -> ModelInfo:
    """The served model if `requested` names it, else 404 model_not_found (as OpenAI)."""
    info = engine.model_info
    if requested != info.id:
        raise ModelNotServed(requested)
    return info


def image_model_named(images: ImageClient | None, requested: str) -> ImageModelInfo | None:
    return None if images is None else images.model(requested)


def embedding_model_named(encoder: EncoderClient | None, requested: str) -> ModelInfo | None:
    """The dedicated embedding model's info when `requested` names it."""
    return encoder.info if encoder is not None and encoder.info.id == requested else None


def wrong_kind(model: str, kind: str, endpoint: str) -> APIError:
    """A served model asked for on an endpoint of another kind (`kind`: "an image model")."""
    return APIError(
        400,
        f"The model `{model}` is {kind}; use it with {endpoint}.",
        param="model",
        code="model_not_supported",
    )


def images_only(model: str) -> APIError:
    return wrong_kind(model, "an image model", "/v1/images/generations")


def embeddings_only(model: str) -> APIError:
    return wrong_kind(model, "an embedding model", "/v1/embeddings")
