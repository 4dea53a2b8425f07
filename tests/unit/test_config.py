"""Worker configuration from the environment: defaults, refusals naming the variable, Kafka pass-through."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from attribution.errors import BadSettings
from attribution.infra.config import Config, kafka_passthrough, load_config

PASSWORD = "s3cr3t-pa55word"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ATTRIBUTION_*, KAFKA_* or REDIS_URL from the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(("ATTRIBUTION_", "KAFKA_")) or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    yield


def refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> BadSettings:
    monkeypatch.setenv(name, value)
    with pytest.raises(BadSettings) as info:
        load_config()
    return info.value


# --- defaults ----------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config()
    assert config.topic_prefix == "attribution."
    assert config.group_id == "attribution"
    assert config.redis_prefix == "attribution"
    assert config.grace_ms == 60_000
    assert config.tally_interval_ms == 500
    assert config.metrics_port == 9464
    assert config.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert config.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert config.max_conversion_events == 5
    assert config.log_level == "INFO"


def test_topics_use_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config().topic("sends") == "attribution.sends"
    monkeypatch.setenv("ATTRIBUTION_TOPIC_PREFIX", "prod.")
    assert load_config().topic("tallies") == "prod.tallies"


# --- environment variables -------------------------------------------------------------------------


def test_engine_settings_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_GRACE_MS", "1000")
    monkeypatch.setenv("ATTRIBUTION_TALLY_INTERVAL_MS", "250")
    monkeypatch.setenv("ATTRIBUTION_REDIS_PREFIX", "attr-prod")
    monkeypatch.setenv("ATTRIBUTION_GROUP_ID", "g1")
    monkeypatch.setenv("ATTRIBUTION_METRICS_PORT", "0")
    config = load_config()
    assert config.grace_ms == 1000
    assert config.tally_interval_ms == 250
    assert config.redis_prefix == "attr-prod"
    assert config.group_id == "g1"
    assert config.metrics_port == 0


def test_services_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    config = load_config()
    assert config.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert config.redis_url.get_secret_value() == "redis://cache:6380/2"
    assert config.kafka()["bootstrap.servers"] == "broker-1:9092,broker-2:9092"


def test_services_also_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_KAFKA_BOOTSTRAP_SERVERS", "b:1")
    monkeypatch.setenv("ATTRIBUTION_REDIS_URL", "redis://r:1/0")
    config = load_config()
    assert config.kafka_bootstrap_servers == "b:1"
    assert config.redis_url.get_secret_value() == "redis://r:1/0"


def test_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_GRACE_MS", "1000")
    assert load_config(grace_ms=5).grace_ms == 5


# --- refusals name the environment variable ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ATTRIBUTION_GRACE_MS", "-1"),
        ("ATTRIBUTION_GRACE_MS", str(7 * 24 * 3600 * 1000 + 1)),
        ("ATTRIBUTION_TALLY_INTERVAL_MS", "abc"),
        ("ATTRIBUTION_TALLY_INTERVAL_MS", "5"),
        ("ATTRIBUTION_REDIS_PREFIX", "a{b}"),
        ("ATTRIBUTION_REDIS_PREFIX", "a b"),
        ("ATTRIBUTION_REDIS_PREFIX", ""),
        ("ATTRIBUTION_GROUP_ID", ""),
        ("ATTRIBUTION_METRICS_PORT", "65536"),
        ("ATTRIBUTION_LOG_LEVEL", "TRACE"),
        ("ATTRIBUTION_MAX_CONVERSION_EVENTS", "0"),
        ("ATTRIBUTION_TALLY_TTL_MS", "1"),
    ],
)
def test_bad_values_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    err = refused(monkeypatch, name, value)
    assert err.field == name
    assert str(err).startswith(f"{name}: ")
    assert repr(value) in err.reason


def test_bad_override_refused_naming_the_variable() -> None:
    with pytest.raises(BadSettings) as info:
        load_config(grace_ms=-1)
    assert info.value.field == "ATTRIBUTION_GRACE_MS"


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(ValueError, match="frozen"):
        config.grace_ms = 1


# --- secrets -------------------------------------------------------------------------------------------


def test_redis_password_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://user:{PASSWORD}@cache:6379/0"
    monkeypatch.setenv("REDIS_URL", url)
    config = load_config()
    assert config.redis_url.get_secret_value() == url
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)
    assert PASSWORD not in repr(config.redis_url)
    assert PASSWORD not in config.model_dump_json()


def test_redis_password_does_not_leak_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@cache:6379/0")
    err = refused(monkeypatch, "ATTRIBUTION_GRACE_MS", "-1")
    assert PASSWORD not in str(err)


# --- Kafka pass-through -------------------------------------------------------------------------------


def test_kafka_passthrough_mapping() -> None:
    environ = {
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL__ENGINE__ID": "dynamic",
        "KAFKA_ENABLE_SSL__CERTIFICATE__VERIFICATION": "false",
        "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        "ATTRIBUTION_KAFKA_X": "no",
        "KAFKA": "no",
        "REDIS_URL": "redis://x",
    }
    assert kafka_passthrough(environ) == {
        "sasl.mechanism": "PLAIN",
        "security.protocol": "SASL_SSL",
        "ssl_engine_id": "dynamic",  # a double underscore is a literal underscore
        "enable.ssl_certificate_verification": "false",
    }


def test_kafka_passthrough_empty() -> None:
    assert kafka_passthrough({}) == {}
    assert kafka_passthrough({"KAFKA_BOOTSTRAP_SERVERS": "b:1"}) == {}


def test_kafka_config_merges_environment_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b:9092")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_CLIENT_ID", "from-env")
    config = load_config()
    assert config.kafka({"client.id": "explicit", "group.id": "g"}) == {
        "bootstrap.servers": "b:9092",
        "sasl.mechanism": "SCRAM-SHA-512",
        "client.id": "explicit",
        "group.id": "g",
    }
    assert config.kafka()["client.id"] == "from-env"


def test_config_class_reads_the_same_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_BATCH_SIZE", "7")
    assert Config().batch_size == 7  # type: ignore[call-arg]


def test_kubernetes_service_link_variables_are_not_librdkafka_properties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "KAFKA_PORT": "tcp://10.0.0.7:9092",
        "KAFKA_SERVICE_HOST": "10.0.0.7",
        "KAFKA_PORT_9092_TCP_ADDR": "10.0.0.7",
        "KAFKA_SASL_MECHANISM": "PLAIN",
    }.items():
        monkeypatch.setenv(name, value)
    assert load_config().kafka() == {"bootstrap.servers": "127.0.0.1:9092", "sasl.mechanism": "PLAIN"}


def test_a_misspelt_setting_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_GRACE", "5")
    with pytest.raises(BadSettings, match="did you mean ATTRIBUTION_GRACE_MS") as info:
        load_config()
    assert info.value.field == "ATTRIBUTION_GRACE"


def test_a_redis_url_that_does_not_parse_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "localhost:6379-s3cret")
    with pytest.raises(BadSettings) as info:
        load_config()
    assert info.value.field == "REDIS_URL" and "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSLX", "Invalid value"),
        ("KAFKA_FOO_BAR", "1", "No such configuration"),
    ],
)
def test_a_librdkafka_property_it_refuses_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    from attribution.runtime.kafka_io import producer

    monkeypatch.setenv(name, value)
    with pytest.raises(BadSettings, match=reason) as info:
        producer(load_config())
    assert info.value.field == name


def test_log_level_and_format_accept_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_LOG_LEVEL", "debug")
    monkeypatch.setenv("ATTRIBUTION_LOG_FORMAT", "JSON")
    config = load_config()
    assert (config.log_level, config.log_format) == ("DEBUG", "json")


def test_a_log_format_that_is_not_text_or_json_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_LOG_FORMAT", "xml")
    with pytest.raises(BadSettings, match="ATTRIBUTION_LOG_FORMAT"):
        load_config()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/zz", "redis://127.0.0.1:6379/0/x"])
def test_a_redis_url_whose_path_is_not_a_database_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(BadSettings, match=r"REDIS_URL: .*database number"):
        load_config()


def test_a_bad_redis_url_error_does_not_show_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://app:s3cret-pass@127.0.0.1:6379/zz")
    with pytest.raises(BadSettings) as caught:
        load_config()
    assert "s3cret-pass" not in str(caught.value)


def test_a_refused_secret_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRIBUTION_API_TOKEN", "short-secret")
    with pytest.raises(BadSettings, match="ATTRIBUTION_API_TOKEN") as caught:
        load_config()
    assert "short-secret" not in str(caught.value)
