"""Worker settings from the environment: one pydantic-settings class, validated at start.

``ATTRIBUTION_*`` configure the engine; ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` locate the
services; any other ``KAFKA_*`` variable is passed to librdkafka (``KAFKA_SASL_MECHANISM`` ->
``sasl.mechanism``; a double underscore stands for a literal one).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import redis.connection
from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from attribution.contract.topics import spec
from attribution.errors import BadSettings


class Config(BaseSettings):
    """Every knob of the worker; env var = ``ATTRIBUTION_`` + the field name in upper case."""

    model_config = SettingsConfigDict(
        env_prefix="ATTRIBUTION_", extra="ignore", frozen=True, populate_by_name=True
    )

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ATTRIBUTION_KAFKA_BOOTSTRAP_SERVERS"),
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=AliasChoices("REDIS_URL", "ATTRIBUTION_REDIS_URL"),
    )
    topic_prefix: str = "attribution."
    group_id: str = Field("attribution", min_length=1)
    redis_prefix: str = Field("attribution", min_length=1, pattern=r"^[^{}\s]+$")
    grace_ms: int = Field(60_000, ge=0, le=7 * 24 * 3600 * 1000)
    tally_interval_ms: int = Field(500, ge=10, le=3_600_000)
    state_margin_ms: int = Field(24 * 3600 * 1000, ge=0)
    tally_ttl_ms: int = Field(90 * 24 * 3600 * 1000, ge=60_000)
    max_conversion_events: int = Field(5, ge=1, le=20)
    max_event_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    # identities: anonymous touches and goals follow the user their device is linked to
    identities: bool = True
    identity_window_ms: int | None = Field(None, ge=0, le=90 * 24 * 3600 * 1000)  # None: longest window
    # user states held in memory between batches (no load, no decode while current); 0: none
    cache_mb: int = Field(256, ge=0, le=1_000_000)
    batch_size: int = Field(10_000, ge=1, le=1_000_000)
    poll_timeout_ms: int = Field(20, ge=1, le=60_000)
    max_idle_ms: int = Field(1_000, ge=0, le=600_000)
    max_buffered: int = Field(50_000, ge=100, le=10_000_000)
    session_timeout_ms: int = Field(45_000, ge=1_000)
    metrics_port: int = Field(9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a metrics endpoint is meant to be scraped
    # `attribution serve`: the tallies API and the live page
    api_port: int = Field(8080, ge=1, le=65535)
    api_host: str = "0.0.0.0"  # noqa: S104 - an API server is meant to be reached
    # optional bearer token for /v1/* (and the page's data); compared in constant time
    api_token: SecretStr | None = Field(None, min_length=16)
    # also keep every conversion record (GET /v1/projects/{p}/conversions/{id}); ~0.5 KB each
    api_conversions: bool = True
    partitions: int = Field(12, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=10)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: one readable line per event; json: one JSON object per line (for log pipelines)
    log_format: Literal["text", "json"] = "text"
    # how often the worker checks that Redis still holds its state generation (lost-state detection)
    state_check_ms: int = Field(5_000, ge=100, le=3_600_000)
    # outputs and input offsets in one Kafka transaction (brokers with transactions); correctness
    # never depends on it: state is fenced in Redis and outputs carry stable ids
    exactly_once: bool = False
    # `attribution worker`: the confluent-kafka batch worker, or the faust-streaming agents
    runtime: Literal["confluent", "faust"] = "confluent"
    transactional_id: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("log_level", "log_format", "runtime", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        try:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(f"not a Redis URL ({mask_url(str(exc))})") from None
        path = urlsplit(url).path.strip("/")
        if path and not path.isdigit():  # redis-py would quietly use database 0
            raise ValueError(f"the path must be a database number such as /0, got /{path}")
        return value

    def topic(self, kind: str) -> str:
        """The full topic name of ``kind``, a name of the topic table (``attribution.contract.topics``)."""
        return f"{self.topic_prefix}{spec(kind).name}"

    def kafka(
        self, extra: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """librdkafka configuration: bootstrap servers, ``defaults``, every KAFKA_* pass-through (which
        may override a default), then ``extra``."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers, **(defaults or {})}
        conf.update(kafka_passthrough(os.environ))
        conf.update(extra or {})
        return conf


def kafka_env_name(prop: str) -> str:
    """The environment variable that sets librdkafka property ``prop``."""
    return "KAFKA_" + prop.replace("_", "__").replace(".", "_").upper()


def _service_link(name: str) -> bool:
    # Kubernetes injects KAFKA_SERVICE_HOST, KAFKA_PORT, KAFKA_PORT_9092_TCP_ADDR... for a Service
    # named "kafka": they are not librdkafka properties.
    return name.startswith(("KAFKA_SERVICE_", "KAFKA_PORT"))


def kafka_passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """``KAFKA_SASL_MECHANISM=PLAIN`` -> ``{"sasl.mechanism": "PLAIN"}``, for all KAFKA_* but bootstrap."""
    # a double underscore stands for a literal underscore in the librdkafka property name
    out: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith("KAFKA_") or name == "KAFKA_BOOTSTRAP_SERVERS" or _service_link(name):
            continue
        key = name[len("KAFKA_") :].lower().replace("__", "\0").replace("_", ".").replace("\0", "_")
        out[key] = value
    return out


#: Read elsewhere, not by Config (none today; the place for a setting a library reads itself).
OTHER_SETTINGS: frozenset[str] = frozenset()


MASK = "***"
_SECRET_WORDS = r"pass|secret|token|key|private|jaas|credential"  # noqa: S105 - names, not a secret


def mask_url(text: str) -> str:
    """A URL (or a message about one) without secrets: the password of ``user:password@`` and the
    values of query options that name one (``ssl_password=``, ``password=``...) become ``***``."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", rf"\1{MASK}@", text)
    return re.sub(rf"([?&][^=&\s]*(?:{_SECRET_WORDS})[^=&\s]*=)[^&\s]*", rf"\1{MASK}", text, flags=re.I)


def is_secret_property(prop: str) -> bool:
    """Whether librdkafka property ``prop`` carries a credential (masked wherever it is shown)."""
    return re.search(_SECRET_WORDS, prop, flags=re.I) is not None


def env_name(field: str) -> str:
    """The environment variable that sets Config field ``field``."""
    aliases = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "redis_url": "REDIS_URL"}
    return aliases.get(field, f"ATTRIBUTION_{field.upper()}")


def _check_names(environ: Mapping[str, str]) -> None:
    """A misspelt ATTRIBUTION_* variable would be silently ignored: refuse it, with a suggestion."""
    known = {f"ATTRIBUTION_{name.upper()}" for name in Config.model_fields} | OTHER_SETTINGS
    for name in environ:
        if name.startswith("ATTRIBUTION_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise BadSettings(name, f"unknown setting{hint}")


def load_config(**overrides: Any) -> Config:
    """Read and validate the settings; a bad one raises BadSettings naming the environment variable."""
    _check_names(os.environ)
    try:
        return Config(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]).lower() if first["loc"] else "settings"
        env = env_name(field)
        secret = (
            "SecretStr" in str(Config.model_fields[field].annotation)
            if field in Config.model_fields
            else True
        )
        shown = "" if secret else f" (got {first.get('input')!r})"  # a secret is never shown
        raise BadSettings(env, f"{first['msg']}{shown}") from None
