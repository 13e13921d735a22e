"""Validate our JSON against the schemas in OpenAI's own OpenAPI description.

The description is OpenAPI 3.1 but still uses 3.0's `nullable: true`, which JSON Schema ignores;
`as_json_schema` rewrites it into `anyOf [..., {"type": "null"}]` so that `"usage": null` and
`"finish_reason": null` validate as OpenAI means them to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:openai-openapi"
# OpenAI's description (MIT), vendored so that the conformance tests run anywhere.
SPEC_PATH = Path(__file__).resolve().parents[1] / "openai-openapi" / "openapi.yaml"


def load_spec(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~2 s instead of ~20 s
    with path.open() as f:
        spec: dict[str, Any] = yaml.load(f, Loader=loader)
    return spec


def as_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", None) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def _absolute_refs(node: Any) -> Any:
    """Point a detached schema's local refs ("#/components/...") back into the spec."""
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: f"{SPEC_URI}{value}" if key == "$ref" and value.startswith("#") else _absolute_refs(value)
        for key, value in node.items()
    }


class OpenAPISchemas:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.json_schema = as_json_schema(spec)
        self.registry: Registry = Registry().with_resource(
            SPEC_URI, DRAFT202012.create_resource(self.json_schema)
        )
        self._validators: dict[str, Draft202012Validator] = {}

    def schema(self, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = self.spec["components"]["schemas"][name]
        return schema

    def validator(self, name: str) -> Draft202012Validator:
        if name not in self._validators:
            ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
            self._validators[name] = Draft202012Validator(ref, registry=self.registry)
        return self._validators[name]

    def validate(self, name: str, instance: Any) -> None:
        self.validator(name).validate(instance)

    def validate_with(self, schema: dict[str, Any], instance: Any) -> None:
        """Validate against a schema derived from the spec's (refs resolve into the spec)."""
        Draft202012Validator(_absolute_refs(as_json_schema(schema)), registry=self.registry).validate(
            instance
        )

    def properties(self, name: str) -> set[str]:
        """Every property of a component schema, following allOf and $ref."""
        return self._properties(self.schema(name))

    def _properties(self, schema: dict[str, Any]) -> set[str]:
        if "$ref" in schema:
            return self.properties(schema["$ref"].rsplit("/", 1)[-1])
        names = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            names |= self._properties(part)
        return names
