"""Request bodies take JSON types as their schema declares them, nothing pydantic would
coerce: `"5"` is not an integer, `0` and `"yes"` are not booleans, `true` is not a
number. Pydantic's lax mode accepts all of these, so a request the OpenAPI schema calls
invalid was accepted; its strict mode would also refuse `24.0`, which JSON Schema calls
an integer. So the check is made against the body's own JSON schema, before pydantic
validates: types, `enum` and `const` only (ranges, lengths and formats stay pydantic's).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

_TYPES: dict[str, str] = {
    "string": "a valid string",
    "integer": "a valid integer",
    "number": "a valid number",
    "boolean": "a valid boolean (true or false)",
    "null": "null",
    "array": "a valid array",
    "object": "a valid object",
}


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `1` is not `true`."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def problem(schema: dict[str, Any], value: Any, defs: dict[str, Any], where: str) -> str | None:
    """Why `value` does not have the JSON types `schema` declares (None if it does)."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            alternatives = [problem(s, value, defs, where) for s in schema[key]]
            if all(alternatives):
                return alternatives[0]
    for sub in schema.get("allOf", ()):
        if found := problem(sub, value, defs, where):
            return found
    kind = schema.get("type")
    if isinstance(kind, str) and not _is(kind, value):
        return f"{where}: Input should be {_TYPES.get(kind, kind)} (not {_describe(value)})"
    if "const" in schema and not _same(schema["const"], value):
        return f"{where}: must be {schema['const']!r}"
    if "enum" in schema and not any(_same(e, value) for e in schema["enum"]):
        return f"{where}: must be one of {', '.join(repr(e) for e in schema['enum'])}"
    if isinstance(value, str) and (found := _text_problem(schema, value, where)):
        return found
    if isinstance(value, list):
        items = schema.get("prefixItems", ())
        for i, item in enumerate(value):
            sub = items[i] if i < len(items) else schema.get("items")
            if isinstance(sub, dict) and (found := problem(sub, item, defs, f"{where}[{i}]")):
                return found
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, item in value.items():
            sub = properties.get(name, schema.get("additionalProperties"))
            inner = f"{where}.{name}" if where else str(name)
            if isinstance(sub, dict) and (found := problem(sub, item, defs, inner)):
                return found
    return None


_NAMES = {bool: "a boolean", str: "a string", int: "a number", float: "a number"}


def _text_problem(schema: dict[str, Any], value: str, where: str) -> str | None:
    """The model strips white space around strings before checking them: without this,
    `maxLength` would be checked on the stripped text, and `"  10.0.0.1"` would pass a
    pattern that refuses it. The schema speaks of the string as sent."""
    limit = schema.get("maxLength")
    if isinstance(limit, int) and len(value) > limit:
        return f"{where}: String should have at most {limit} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and value != value.strip() and not _regex(pattern).search(value):
        return f"{where}: white space around the value is not allowed here"
    return None


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    """JSON Schema's reading of a pattern: `$` is the very end of the text (Python's
    `$` also matches before a final newline)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return _NAMES.get(type(value), type(value).__name__)


@functools.cache
def _schema(cls: type[BaseModel]) -> dict[str, Any]:
    return cls.model_json_schema(mode="validation")


class JsonTyped(BaseModel):
    """Mixin for request bodies: JSON types checked against the body's own schema (422,
    naming the field), before pydantic's lax validation could coerce them."""

    @model_validator(mode="before")
    @classmethod
    def _json_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise PydanticCustomError("json_type", "the request body must be a JSON object")
        schema = _schema(cls)
        found = problem(schema, data, schema.get("$defs", {}), "")
        if found:
            raise PydanticCustomError("json_type", found)
        return data
