"""The topic contract: JSON Schemas (draft-07) for every topic, compiled validators and the examples.

Schemas live in ``<repo>/topics/<name>.schema.json`` (or ``$ATTRIBUTION_TOPICS_DIR``); see topics/README.md.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from attribution.errors import BadInput

TOPIC_NAMES: tuple[str, ...] = ("sends", "clicks", "goals", "settings", "conversions", "tallies", "dlq")

_MAX_SHOWN = 80  # characters of an offending value quoted in an error message


def topics_dir() -> Path:
    """Directory holding the schemas: ``$ATTRIBUTION_TOPICS_DIR`` if set, else ``<repo root>/topics``."""
    env = os.environ.get("ATTRIBUTION_TOPICS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "topics"


def _check_name(name: str) -> None:
    if name not in TOPIC_NAMES:
        raise ValueError(f"unknown topic {name!r}; expected one of {', '.join(TOPIC_NAMES)}")


def schema(name: str) -> dict[str, Any]:
    """The parsed JSON Schema of topic ``name`` (a fresh dict each call); ValueError for an unknown name."""
    _check_name(name)
    doc = orjson.loads((topics_dir() / f"{name}.schema.json").read_bytes())
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


def examples(name: str, valid: bool = True) -> list[tuple[str, Any]]:
    """Example messages of topic ``name`` as (file name, parsed JSON), sorted; [] when there are none."""
    _check_name(name)
    base = topics_dir() / "examples"
    folder = base / name if valid else base / "invalid" / name
    if not folder.is_dir():
        return []
    return [(p.name, orjson.loads(p.read_bytes())) for p in sorted(folder.glob("*.json"))]
