"""The topic contract: JSON Schemas (draft-07) for every topic and their compiled validators.

The schemas ship inside the package (``attribution/contract/schemas/``, read with importlib.resources)
so that an installed wheel validates settings too; ``topics/`` at the repository root is the same
contract for people to read, with examples. ``tests/unit/test_contract.py`` keeps the two copies and
the msgspec structs of the topic table in agreement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import fastjsonschema
import orjson

from attribution.contract.topics import NAMES, spec
from attribution.errors import BadInput

TOPIC_NAMES: tuple[str, ...] = NAMES

_MAX_SHOWN = 80  # characters of an offending value quoted in an error message


def schema_text(name: str) -> bytes:
    """The JSON Schema file of topic ``name`` as shipped in the package."""
    return (resources.files(__package__) / "schemas" / f"{name}.schema.json").read_bytes()


def schema(name: str) -> dict[str, Any]:
    """The parsed JSON Schema of topic ``name`` (a fresh dict each call); ValueError for an unknown name."""
    spec(name)
    doc = orjson.loads(schema_text(name))
    if not isinstance(doc, dict):
        raise ValueError(f"{name}.schema.json: a schema must be a JSON object")
    return doc


def _explain(name: str, exc: Any) -> str:
    """A readable reason naming the field, built from a fastjsonschema.JsonSchemaException."""
    prefix = str(getattr(exc, "name", "data"))  # e.g. "data.conversion_events[0].basis.kakao"
    field = prefix.removeprefix("data").lstrip(".")
    value = getattr(exc, "value", None)
    definition = getattr(exc, "definition", None)
    if getattr(exc, "rule", None) == "required" and isinstance(value, dict) and isinstance(definition, dict):
        missing = [key for key in definition.get("required", []) if key not in value]
        where = ", ".join(f"{field}.{key}" if field else key for key in missing)
        return f"{name} record: missing required field {where}"
    message = str(getattr(exc, "message", exc))
    detail = message.removeprefix(prefix).strip()
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[:_MAX_SHOWN] + "..."
    subject = f"field {field}" if field else "the record"
    return f"{name} record: {subject} {detail} (got {shown})"


@functools.cache
def validator(name: str) -> Callable[[Any], Any]:
    """Compiled validator for topic ``name``: returns the value, with schema defaults filled in (in place).

    Raises BadInput naming the field when the value does not match the schema.
    """
    compiled = fastjsonschema.compile(schema(name))

    def validate(value: Any) -> Any:
        try:
            return compiled(value)
        except fastjsonschema.JsonSchemaException as exc:
            raise BadInput(_explain(name, exc)) from exc

    validate.__name__ = f"validate_{name}"
    validate.__doc__ = f"Validate one {name} record against topics/{name}.schema.json."
    return validate
