"""``attribution settings show``: every setting with its value, where it came from and its default.

Secrets are masked: SecretStr settings, the password inside ``REDIS_URL`` (user, host and database
stay visible, they are what an operator checks), and librdkafka properties that hold credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from attribution.infra.config import (
    MASK,
    Config,
    env_name,
    is_secret_property,
    kafka_env_name,
    kafka_passthrough,
    mask_url,
)


class SettingRow(NamedTuple):
    name: str  # the environment variable
    value: str
    source: str  # "environment" or "default"
    default: str


def _shown(field: str, value: Any) -> str:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return mask_url(secret) if field.endswith("_url") else (MASK if secret else "")
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _default(field: str, info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "(computed)"
    return _shown(field, info.default)


def rows(config: Config, environ: Mapping[str, str]) -> list[SettingRow]:
    """One row per Config field, then one per ``KAFKA_*`` property passed to librdkafka."""
    out = []
    for field, info in Config.model_fields.items():
        name = env_name(field)
        from_env = name in environ or f"ATTRIBUTION_{field.upper()}" in environ
        out.append(
            SettingRow(
                name,
                _shown(field, getattr(config, field)),
                "environment" if from_env else "default",
                _default(field, info),
            )
        )
    for prop, value in sorted(kafka_passthrough(environ).items()):
        name = kafka_env_name(prop)
        shown = MASK if is_secret_property(prop) else value
        out.append(SettingRow(name, shown, "environment", f"(librdkafka {prop})"))
    return out


def table(found: list[SettingRow]) -> str:
    """The rows as an aligned text table."""
    header = SettingRow("SETTING", "VALUE", "SOURCE", "DEFAULT")
    widths = [max(len(r[i]) for r in [header, *found]) for i in range(3)]
    lines = [
        f"{r.name:<{widths[0]}}  {r.value:<{widths[1]}}  {r.source:<{widths[2]}}  {r.default}".rstrip()
        for r in [header, *found]
    ]
    return "\n".join(lines)
