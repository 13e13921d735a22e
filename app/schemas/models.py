"""/v1/models: the model object and the list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from model_runtime import ModelInfo
from model_runtime.images import ImageModelInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str

    @classmethod
    def of(cls, info: ModelInfo | ImageModelInfo) -> ModelCard:
        return cls(id=info.id, created=info.created, owned_by=info.owned_by)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
