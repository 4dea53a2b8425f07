"""Publishes absolute snapshots of the counters marked dirty in the state store: campaign tallies
(to ``tallies``) and the projects' subscription records (to ``subscriptions``).

A campaign's dirty mark is raised to its new version right after every change of its counters (and
again by the recovery of a torn batch), so a crash between a batch and its tally publication loses
nothing: the next publisher (this worker or another) finds the mark and publishes. A mark is removed
only when the record with the highest offset of its key on the (compacted) topic carries at least
that version: a stale snapshot appended after a newer one by another worker is followed by the
newest again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from attribution.core.rules import SettingsBook
from attribution.core.subscriptions import day_snapshot, now_snapshot
from attribution.core.tally import snapshot
from attribution.errors import AttributionError
from attribution.state.base import Store
from attribution.state.keys import Keys, Subject

# publish(topic, kafka_key, snapshot, on_offset): on_offset(offset) once the broker appended the
# record; topic is "tallies" or "subscriptions" (the name without ATTRIBUTION_TOPIC_PREFIX)
Publish = Callable[[str, str, dict[str, Any], Callable[[int], None]], None]


class TallyFeed:
    """``publish_dirty`` reads up to ``limit`` dirty members, hands snapshots to ``publish`` (with the
    Kafka key ``project_id:campaign_id``, ``project_id`` or ``project_id:day``), calls ``flush``
    (which must make them durable and report their offsets), then acknowledges them with the offsets
    they got."""

    def __init__(self, store: Store, keys: Keys, settings: SettingsBook, limit: int = 5000) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings
        self.limit = limit

    def publish_dirty(self, publish: Publish, flush: Callable[[], None]) -> int:
        members = self.store.dirty(self.limit)
        if not members:
            return 0
        subjects = [self.keys.parse_subject(m) for m in members]
        keys = [self.keys.counters_of(s) for s in subjects]
        versions: dict[str, int] = {}
        offsets: dict[str, int] = {}
        for member, subject, fields in zip(members, subjects, self.store.counters(keys), strict=True):
            if not fields:  # expired or never written: nothing to say, forget the mark
                versions[member], offsets[member] = -1, -1
                continue
            topic, key, snap = self._snapshot(subject, fields)
            versions[member] = snap["version"]
            publish(topic, key, snap, functools.partial(offsets.__setitem__, member))
        flush()
        missing = [m for m in versions if m not in offsets]
        if missing:  # flush() returned without a delivery report: keep the marks, publish again
            raise AttributionError(f"no delivery report for {len(missing)} tally snapshots")
        self.store.ack([(m, v, offsets[m]) for m, v in versions.items()])
        return len(members)

    def _snapshot(self, subject: Subject, fields: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
        project_id, campaign_id, day = subject
        if campaign_id is not None:
            snap = snapshot(project_id, campaign_id, fields, self.settings.get(project_id))
            return "tallies", f"{project_id}:{campaign_id}", snap
        if day is not None:
            return "subscriptions", f"{project_id}:{day}", day_snapshot(project_id, day, fields)
        return "subscriptions", project_id, now_snapshot(project_id, fields, self.settings.get(project_id))
