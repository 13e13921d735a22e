"""Pydantic's validation errors -> one OpenAI-style error: a message, the offending `param`, a code.

Pydantic reports every failure, and for a union field one per member, with the member's type in the
location (`("prompt", "list[int]", 1)`), or for a union told apart by its `type` field, that type's
value (`("response_format", "json_schema", "json_schema", "name")`). OpenAI reports one error with a
dotted parameter path, so we pick the first failing parameter, cut the path where a union starts and
describe the deepest failure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.excerpts import excerpt

_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}
_PRETTY_TYPES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}
_PLURAL_TYPES = {"str": "strings", "int": "integers", "float": "numbers", "bool": "booleans"}
_BODY_NOT_AN_OBJECT = {"model_attributes_type", "model_type", "dict_type"}
# Parameters whose value is a union told apart by its `type` field (`Field(discriminator="type")`).
_TYPE_TAGGED_PARAMS = frozenset({"response_format"})


@dataclass(frozen=True)
class DescribedError:
    message: str
    param: str | None
    code: str


@dataclass(frozen=True)
class _Located:
    param: tuple[str | int, ...]  # up to the first union member
    path: tuple[str | int, ...]  # the whole location without union members
    member: str | None  # the union member this error came from, if any
    error: dict[str, Any]


def _is_union_member(element: str | int) -> bool:
    # Request field names are snake_case; pydantic's member tags are type names ("list[int]",
    # "TextContentPart"). Keys of a free-form map (logit_bias) also land here, which is harmless.
    return isinstance(element, str) and (element in _TYPE_NAMES or not _FIELD_NAME.match(element))


def _locate(error: dict[str, Any], body: Any = None) -> _Located:
    loc = tuple(error["loc"])
    if loc[:1] == ("body",):
        loc = loc[1:]
    # The unknown key itself is whatever the client sent, never a union member.
    head, tail = (loc[:-1], loc[-1:]) if error["type"] == "extra_forbidden" else (loc, ())
    param: list[str | int] = []
    path: list[str | int] = []
    member: str | None = None
    node = body  # the body's value at `path`
    previous: str | int | None = None
    for element in head:
        # A union told apart by `type` puts the object's own `type` value in the location, right
        # after the parameter, before its fields (one of which may have the same name).
        is_tag = previous in _TYPE_TAGGED_PARAMS and isinstance(node, dict) and node.get("type") == element
        previous = element
        if is_tag or _is_union_member(element):
            member = member or str(element)
            continue
        node = _child(node, element)
        if member is None:
            param.append(element)
        path.append(element)
    if member is None:
        param.extend(tail)
    path.extend(tail)
    return _Located(tuple(param), tuple(path), member, error)


def _child(node: Any, key: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path)


def _plural_type(tag: str) -> str:
    if tag.startswith("list[") and tag.endswith("]"):
        return f"arrays of {_plural_type(tag[5:-1])}"
    return _PLURAL_TYPES.get(tag, "objects")


def _pretty_type(tag: str) -> str:
    """A pydantic union member tag in words: "list[list[int]]" -> "an array of arrays of integers",
    "literal['none','auto']" -> "one of 'none', 'auto'"."""
    if tag.startswith("list[") and tag.endswith("]"):
        return f"an array of {_plural_type(tag[5:-1])}"
    if tag.startswith("literal[") and tag.endswith("]"):
        return "one of " + ", ".join(tag[8:-1].split(","))
    return _PRETTY_TYPES.get(tag, "an object")


def unparsable_body(reason: str | None = None) -> DescribedError:
    """The error for a body that is not JSON at all; `reason` is the parser's, where it gave one."""
    because = f" ({reason})" if reason else ""
    return DescribedError(
        f"We could not parse the JSON body of your request{because}. "
        "The API expects a JSON object with Content-Type: application/json.",
        None,
        "invalid_json",
    )


def _body_error(error: dict[str, Any]) -> DescribedError | None:
    """Errors about the body as a whole rather than one parameter."""
    if error["type"] == "json_invalid":
        return unparsable_body((error.get("ctx") or {}).get("error", "invalid JSON"))
    if tuple(error["loc"]) == ("body",):
        if error["type"] == "missing":
            return DescribedError("The request body is empty; send a JSON object.", None, "invalid_json")
        if error["type"] in _BODY_NOT_AN_OBJECT:
            return DescribedError(
                "The request body must be a JSON object sent with Content-Type: application/json.",
                None,
                "invalid_json",
            )
    return None


def describe_validation_errors(errors: Sequence[dict[str, Any]], body: Any = None) -> DescribedError:
    """`body`: the request as parsed JSON, which tells the `type` tags in a location apart."""
    if not errors:
        return DescribedError("Invalid request.", None, "invalid_value")
    for error in errors:
        if (described := _body_error(error)) is not None:
            return described

    located = [_locate(error, body) for error in errors]
    first = located[0].param
    group = [item for item in located if item.param == first]
    param = excerpt(_dotted(first)) or None
    deepest = max(group, key=lambda item: len(item.path))  # max keeps the first of equals

    if len(group) > 1 and len(deepest.path) == len(first):
        # Every union member failed at the top: the value has none of the accepted types.
        members = list(dict.fromkeys(item.member for item in group if item.member))
        expected = ", ".join(_pretty_type(m) for m in members[:-1])
        expected = f"{expected} or {_pretty_type(members[-1])}" if expected else _pretty_type(members[-1])
        return DescribedError(f"Invalid type for '{param}': expected {expected}.", param, "invalid_type")
    return _describe_one(deepest, param)


def _describe_one(item: _Located, param: str | None) -> DescribedError:
    kind: str = item.error["type"]
    msg: str = item.error["msg"]
    where = excerpt(_dotted(item.path))
    if kind == "missing":
        return DescribedError(f"Missing required parameter: '{where}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        name = excerpt(str(item.path[-1]))
        if len(item.path) == 1:
            return DescribedError(
                f"Unrecognized request argument supplied: {name}", param, "unknown_parameter"
            )
        parent = excerpt(_dotted(item.path[:-1]))
        return DescribedError(f"Unrecognized argument '{name}' in '{parent}'.", param, "unknown_parameter")
    if kind == "unsupported_parameter":
        return DescribedError(msg, param, "unsupported_parameter")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return DescribedError(f"Invalid type for '{where}': {msg}.", param, "invalid_type")
    return DescribedError(f"Invalid value for '{where}': {msg.rstrip('.')}.", param, "invalid_value")
