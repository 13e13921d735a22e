"""Function calling and response formats: the request shapes, and the calls in responses and chunks."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import RequestModel
from model_runtime import Constraint, ConstraintKind, ToolSpec

FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # Calls are always generated to follow `parameters` when the grammar forces a call; strict
    # adds nothing we could do better, so either value is honoured.
    strict: bool | None = None


class ChatTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition

    @model_validator(mode="before")
    @classmethod
    def _check_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "custom":
            raise PydanticCustomError(
                "unsupported_parameter", "Tools of type 'custom' are not supported; use 'function' tools."
            )
        return data

    def to_spec(self) -> ToolSpec:
        f = self.function
        return ToolSpec(f.name, f.description, f.parameters)


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


ChatToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallParam(RequestModel):
    name: str
    arguments: str  # JSON text, as the model produced it


class AssistantToolCall(RequestModel):
    """A call the assistant made earlier in the conversation."""

    id: str
    type: Literal["function"]
    function: FunctionCallParam

    def for_template(self) -> dict[str, Any]:
        """As Hugging Face templates read a call: arguments as an object where they parse."""
        try:
            arguments: Any = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.function.name, "arguments": arguments},
        }


class JSONSchemaFormat(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(RequestModel):
    type: Literal["text"]


class JSONObjectFormat(RequestModel):
    type: Literal["json_object"]


class JSONSchemaResponseFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat

    @field_validator("json_schema")
    @classmethod
    def _check_schema(cls, value: JSONSchemaFormat) -> JSONSchemaFormat:
        schema = value.schema_
        if schema is not None and schema.get("type") not in (None, "object") and "$ref" not in schema:
            raise PydanticCustomError("value_error", "The schema's top level must be an object.")
        return value


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaResponseFormat, Field(discriminator="type")
]


def constraint_of(
    response_format: TextFormat | JSONObjectFormat | JSONSchemaResponseFormat,
) -> Constraint | None:
    if isinstance(response_format, JSONObjectFormat):
        return Constraint(ConstraintKind.JSON_OBJECT)
    if isinstance(response_format, JSONSchemaResponseFormat):
        schema = response_format.json_schema.schema_
        if schema is None:
            return Constraint(ConstraintKind.JSON_OBJECT)
        return Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(schema))
    return None


class FunctionOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


def _is_none(value: object) -> bool:
    return value is None


class FunctionDelta(BaseModel):
    name: str | None = Field(None, exclude_if=_is_none)
    arguments: str | None = Field(None, exclude_if=_is_none)


class ToolCallDelta(BaseModel):
    """A streamed piece of a call: the first carries id, type and name, later ones arguments."""

    index: int
    id: str | None = Field(None, exclude_if=_is_none)
    type: Literal["function"] | None = Field(None, exclude_if=_is_none)
    function: FunctionDelta
