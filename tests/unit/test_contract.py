"""The topic contract: every valid example passes its schema, every invalid one is refused with a reason."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from attribution import contract
from attribution.contract.topics import NAMES, Role, spec
from attribution.core.rules import SettingsBook, parse_settings
from attribution.engine.processor import BatchResult, EngineConfig, Processor, Record
from attribution.errors import BadInput, BadSettings
from attribution.runtime.settings_sync import settings_record
from attribution.state.keys import Keys
from attribution.state.memory import MemoryStore
from tests.support.examples import TOPICS_DIR, examples

EVENTS = ("sends", "clicks", "goals", "web_events", "identity")
INPUTS = (*EVENTS, "settings")
OUTPUTS = ("conversions", "tallies", "subscriptions", "dlq")


def _cases(valid: bool) -> list[Any]:
    return [
        pytest.param(name, doc, id=f"{name}/{file}")
        for name in contract.TOPIC_NAMES
        for file, doc in examples(name, valid=valid)
    ]


@pytest.mark.parametrize(("name", "doc"), _cases(valid=True))
def test_valid_example_passes(name: str, doc: Any) -> None:
    contract.validator(name)(doc)


@pytest.mark.parametrize(("name", "doc"), _cases(valid=False))
def test_invalid_example_is_refused(name: str, doc: Any) -> None:
    with pytest.raises(BadInput, match=rf"^{name} record: "):
        contract.validator(name)(doc)


@pytest.mark.parametrize("name", contract.TOPIC_NAMES)
def test_enough_examples(name: str) -> None:
    assert len(examples(name)) >= 2
    if name in INPUTS:
        assert len(examples(name, valid=False)) >= 4


def _properties_without_description(node: Any, where: str) -> list[str]:
    """Every property schema (recursively) must say what it means."""
    if not isinstance(node, dict):
        return []
    missing: list[str] = []
    for key, sub in node.get("properties", {}).items():
        if "description" not in sub:
            missing.append(f"{where}.{key}")
        missing += _properties_without_description(sub, f"{where}.{key}")
    for key, sub in node.get("patternProperties", {}).items():
        missing += _properties_without_description(sub, f"{where}[{key}]")
    for key in ("items", "additionalProperties"):
        missing += _properties_without_description(node.get(key), f"{where}.{key}")
    return missing


@pytest.mark.parametrize("name", contract.TOPIC_NAMES)
def test_schema_metadata(name: str) -> None:
    doc = contract.schema(name)
    assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert doc["$id"] == f"attribution.{name}"
    assert doc["title"]
    assert doc["description"]
    # event topics are forward compatible; settings refuse an unknown field (a typo must not pass)
    assert doc["additionalProperties"] is (name in EVENTS)
    assert _properties_without_description(doc, name) == []


def test_error_names_the_field() -> None:
    docs = dict(examples("sends", valid=False))
    with pytest.raises(BadInput, match=r"missing required field event_id"):
        contract.validator("sends")(docs["missing_event_id.json"])
    with pytest.raises(BadInput, match=r"field channel must be one of"):
        contract.validator("sends")(docs["bad_channel_fax.json"])
    settings = dict(examples("settings", valid=False))
    with pytest.raises(BadInput, match=r"field conversion_events\[0\]\.basis\.kakao "):
        contract.validator("settings")(settings["kakao_click_basis.json"])


@pytest.mark.parametrize(("file", "doc"), examples("settings", valid=False))
def test_invalid_settings_examples_are_refused_by_the_worker_too(file: str, doc: Any) -> None:
    """A worker reads settings records with parse_settings, not the schema: it must refuse them all."""
    with pytest.raises(BadSettings):
        parse_settings(doc, max_events=5)


def test_settings_refuse_unknown_fields_at_every_level_naming_the_path() -> None:
    invalid = dict(examples("settings", valid=False))
    with pytest.raises(BadSettings) as top:
        parse_settings(invalid["unknown_top_level_field.json"])
    assert str(top.value) == (
        "conversion_event: unknown field "
        "(expected one of: project_id, version, conversion_events, campaign_channels, campaign_goals, "
        "visitor_days, timezone)"
    )
    with pytest.raises(BadSettings) as nested:
        parse_settings(invalid["unknown_conversion_event_field.json"])
    assert nested.value.field == "conversion_events[0].window"
    assert nested.value.reason == "unknown field (expected one of: name, window_ms, basis, purchase)"
    with pytest.raises(BadInput, match=r"must not contain \{'conversion_event'\} properties"):
        contract.validator("settings")(invalid["unknown_top_level_field.json"])


def test_defaults_are_filled() -> None:
    docs = dict(examples("sends"))
    out = contract.validator("sends")(docs["push_sent_device5_of5_defaults.json"])
    assert out["status"] == "sent"
    assert out["variant"] is None


def test_outputs_refuse_unknown_fields() -> None:
    for name in OUTPUTS:
        _, doc = examples(name)[0]
        with pytest.raises(BadInput, match="must not contain"):
            contract.validator(name)({**doc, "unexpected": 1})


def test_unknown_topic() -> None:
    with pytest.raises(ValueError, match="unknown topic"):
        contract.schema("impressions")


def test_packaged_schemas_are_the_topics_folder() -> None:
    """The wheel ships attribution/contract/schemas; people read topics/. They must be one contract:
    after editing topics/X.schema.json, copy it to attribution/contract/schemas/."""
    on_disk = {p.name.removesuffix(".schema.json") for p in TOPICS_DIR.glob("*.schema.json")}
    assert on_disk == set(NAMES)
    for name in NAMES:
        assert contract.schema_text(name) == (TOPICS_DIR / f"{name}.schema.json").read_bytes(), name


@pytest.mark.parametrize(("name", "doc"), _cases(valid=True))
def test_valid_example_decodes_into_the_topic_struct(name: str, doc: Any) -> None:
    msgspec.convert(doc, spec(name).struct)


@pytest.mark.parametrize("name", NAMES)
def test_struct_fields_are_the_schema_properties(name: str) -> None:
    """The struct of the topic table and the schema name the same fields and the same required ones."""
    doc = contract.schema(name)
    info = msgspec.inspect.type_info(spec(name).struct)
    assert isinstance(info, msgspec.inspect.StructType)
    assert {f.encode_name for f in info.fields} == set(doc["properties"]), name
    assert {f.encode_name for f in info.fields if f.required} == set(doc["required"]), name


def _source(dead_letter: Any) -> str:
    return str(dead_letter["topic"]).rsplit(".", 1)[1]


@pytest.mark.parametrize(
    ("file", "doc"), [(f, d) for f, d in examples("dlq") if spec(_source(d)).role is Role.INPUT]
)
def test_dlq_examples_are_what_the_engine_writes(file: str, doc: Any) -> None:
    """Each DLQ example of an input topic is the record the engine writes for its raw value."""
    kind = _source(doc)
    processor = Processor(MemoryStore(), Keys("x"), SettingsBook(), EngineConfig())
    result = BatchResult()
    key = doc["key"].encode() if doc["key"] is not None else None
    record = Record(kind, doc["topic"], doc["partition"], doc["offset"], key, doc["raw"].encode())
    assert processor.decode(record, result) is None
    assert msgspec.to_builtins(result.dead_letters[0]) == doc


@pytest.mark.parametrize(("file", "doc"), [(f, d) for f, d in examples("dlq") if _source(d) == "settings"])
def test_settings_dlq_examples_are_what_a_worker_writes(file: str, doc: Any) -> None:
    """Each DLQ example of the settings topic is the record a worker writes for its raw value."""
    assert doc["partition"] == 0  # the settings topic has one partition
    key = doc["key"].encode() if doc["key"] is not None else None
    refused = settings_record(doc["topic"], doc["partition"], doc["offset"], key, doc["raw"].encode(), 5)
    assert msgspec.to_builtins(refused) == doc


def test_settings_dlq_examples_exist() -> None:
    assert [f for f, d in examples("dlq") if _source(d) == "settings"] == ["bad_settings.json"]
