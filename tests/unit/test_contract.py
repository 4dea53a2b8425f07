"""The topic contract: every valid example passes its schema, every invalid one is refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from attribution import contract
from attribution.errors import BadInput

INPUTS = ("sends", "clicks", "goals", "settings")
OUTPUTS = ("conversions", "tallies", "dlq")


def _cases(valid: bool) -> list[Any]:
    return [
        pytest.param(name, doc, id=f"{name}/{file}")
        for name in contract.TOPIC_NAMES
        for file, doc in contract.examples(name, valid=valid)
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
    assert len(contract.examples(name)) >= 2
    if name in INPUTS:
        assert len(contract.examples(name, valid=False)) >= 4


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
    assert doc["additionalProperties"] is (name in INPUTS)
    assert _properties_without_description(doc, name) == []


def test_error_names_the_field() -> None:
    docs = dict(contract.examples("sends", valid=False))
    with pytest.raises(BadInput, match=r"missing required field event_id"):
        contract.validator("sends")(docs["missing_event_id.json"])
    with pytest.raises(BadInput, match=r"field channel must be one of"):
        contract.validator("sends")(docs["bad_channel_fax.json"])
    settings = dict(contract.examples("settings", valid=False))
    with pytest.raises(BadInput, match=r"field conversion_events\[0\]\.basis\.kakao "):
        contract.validator("settings")(settings["kakao_click_basis.json"])


def test_defaults_are_filled() -> None:
    docs = dict(contract.examples("sends"))
    out = contract.validator("sends")(docs["push_sent_device5_of5_defaults.json"])
    assert out["status"] == "sent"
    assert out["variant"] is None


def test_outputs_refuse_unknown_fields() -> None:
    for name in OUTPUTS:
        _, doc = contract.examples(name)[0]
        with pytest.raises(BadInput, match="must not contain"):
            contract.validator(name)({**doc, "unexpected": 1})


def test_unknown_topic() -> None:
    with pytest.raises(ValueError, match="unknown topic"):
        contract.schema("impressions")


def test_topics_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("ATTRIBUTION_TOPICS_DIR", str(tmp_path))
    assert contract.topics_dir() == tmp_path
    assert contract.examples("sends") == []
