"""/v1/models: the model object and the list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from model_runtime import ModelInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str

    @classmethod
    def of(cls, info: ModelInfo) -> ModelCard:
        return cls(id=info.id, created=info.created, owned_by=info.owned_by)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
