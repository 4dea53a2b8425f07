"""Publishes absolute tally snapshots of the campaigns marked dirty in the state store.

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
from attribution.core.tally import snapshot
from attribution.errors import AttributionError
from attribution.state.base import Store
from attribution.state.keys import Keys

# publish(kafka_key, snapshot, on_offset): on_offset(offset) once the broker appended the record
Publish = Callable[[str, dict[str, Any], Callable[[int], None]], None]


class TallyFeed:
    """``publish_dirty`` reads up to ``limit`` dirty campaigns, hands snapshots to ``publish`` (with the
    Kafka key ``project_id:campaign_id``), calls ``flush`` (which must make them durable and report
    their offsets), then acknowledges them with the offsets they got."""

    def __init__(self, store: Store, keys: Keys, settings: SettingsBook, limit: int = 5000) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings
        self.limit = limit

    def publish_dirty(self, publish: Publish, flush: Callable[[], None]) -> int:
        members = self.store.dirty(self.limit)
        if not members:
            return 0
        idents = [self.keys.parse_member(m) for m in members]
        keys = [self.keys.campaign(p, c) for p, c in idents]
        versions: dict[str, int] = {}
        offsets: dict[str, int] = {}
        for member, (project_id, campaign_id), fields in zip(
            members, idents, self.store.counters(keys), strict=True
        ):
            if not fields:  # expired or never written: nothing to say, forget the mark
                versions[member], offsets[member] = -1, -1
                continue
            snap = snapshot(project_id, campaign_id, fields, self.settings.get(project_id))
            versions[member] = snap["version"]
            publish(f"{project_id}:{campaign_id}", snap, functools.partial(offsets.__setitem__, member))
        flush()
        missing = [m for m in versions if m not in offsets]
        if missing:  # flush() returned without a delivery report: keep the marks, publish again
            raise AttributionError(f"no delivery report for {len(missing)} tally snapshots")
        self.store.ack([(m, v, offsets[m]) for m, v in versions.items()])
        return len(members)
