"""Publishes absolute tally snapshots of the campaigns marked dirty in the state store.

A campaign's dirty mark is raised to its new version right after every change of its counters (and
again by the recovery of a torn batch), so a crash between a batch and its tally publication loses
nothing: the next publisher (this worker or another) finds the mark and publishes. A mark is removed
only if the campaign did not change after its snapshot was read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attribution.core.rules import SettingsBook
from attribution.core.tally import snapshot
from attribution.state.base import Store
from attribution.state.keys import Keys

Publish = Callable[[str, dict[str, Any]], None]


class TallyFeed:
    """``publish_dirty`` reads up to ``limit`` dirty campaigns, hands snapshots to ``publish`` (with the
    Kafka key ``project_id:campaign_id``), then
    calls ``flush`` (which must make them durable) and acknowledges them."""

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
        published: list[tuple[str, int]] = []
        for member, (project_id, campaign_id), fields in zip(
            members, idents, self.store.counters(keys), strict=True
        ):
            if not fields:  # expired or never written: nothing to say, forget the mark
                published.append((member, -1))
                continue
            snap = snapshot(project_id, campaign_id, fields, self.settings.get(project_id))
            publish(f"{project_id}:{campaign_id}", snap)
            published.append((member, snap["version"]))
        flush()
        self.store.ack(published)
        return len(members)
