"""Every topic of the engine in one table: name, role, Kafka key, compaction and record struct.

Adding a topic is one row here, a schema in ``topics/`` (copied into ``contract/schemas/``) and its
examples; topic creation, the worker's subscriptions, decoding and the contract tests read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import msgspec

from attribution.core.model import Click, Goal, Identity, Send, WebEvent
from attribution.core.outputs import Conversion, DeadLetter
from attribution.core.rules import ProjectSettings
from attribution.core.subscriptions import SubscriptionsRecord
from attribution.core.tally import TallyRecord


class Role(StrEnum):
    INPUT = "input"  # co-partitioned events keyed by user key; the worker's consumer group reads them
    CONTROL = "control"  # read whole by every worker (settings)
    OUTPUT = "output"  # written by the workers


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: ``name`` is the suffix after ``ATTRIBUTION_TOPIC_PREFIX``."""

    name: str
    role: Role
    struct: type[msgspec.Struct]
    key: str  # what a record is keyed by, for people and the docs
    compacted: bool = False
    single_partition: bool = False  # created with one partition whatever ATTRIBUTION_PARTITIONS says


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("sends", Role.INPUT, Send, "user key"),
    TopicSpec("clicks", Role.INPUT, Click, "user key"),
    TopicSpec("goals", Role.INPUT, Goal, "user key"),
    TopicSpec("web_events", Role.INPUT, WebEvent, "user key"),
    # internal: written and read by the workers (identities), co-partitioned with the inputs
    TopicSpec("identity", Role.INPUT, Identity, "to: the device (link) or the owner (route)"),
    TopicSpec("settings", Role.CONTROL, ProjectSettings, "project_id", compacted=True, single_partition=True),
    TopicSpec("conversions", Role.OUTPUT, Conversion, "project_id:campaign_id"),
    TopicSpec("tallies", Role.OUTPUT, TallyRecord, "project_id:campaign_id", compacted=True),
    TopicSpec(
        "subscriptions", Role.OUTPUT, SubscriptionsRecord, "project_id, or project_id:day", compacted=True
    ),
    TopicSpec("dlq", Role.OUTPUT, DeadLetter, "the original record's key"),
)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}
NAMES: tuple[str, ...] = tuple(t.name for t in TOPICS)
INPUTS: tuple[str, ...] = tuple(t.name for t in TOPICS if t.role is Role.INPUT)
OUTPUTS: tuple[str, ...] = tuple(t.name for t in TOPICS if t.role is Role.OUTPUT)


def spec(name: str) -> TopicSpec:
    """The row of topic ``name``; ValueError naming the known topics otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown topic {name!r}; expected one of {', '.join(NAMES)}") from None
