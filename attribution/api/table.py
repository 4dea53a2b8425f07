"""The read model of ``serve``: the latest tally per campaign, the latest subscriptions record per
project and per day, and the latest record per conversion.

Records are kept as the JSON bytes the workers published (answers are built by joining them, with
no re-encoding); a tally or a subscriptions record replaces the kept one only when its version is
not lower, so a stale snapshot that lands last on the topic cannot roll a campaign (or a project's
subscriptions) back. Listeners hear every change, from the follower's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import orjson

from attribution.core.outputs import Conversion
from attribution.core.subscriptions import SubscriptionsRecord
from attribution.core.tally import TallyRecord

log = logging.getLogger(__name__)
_TALLY = msgspec.json.Decoder(TallyRecord)
_CONVERSION = msgspec.json.Decoder(Conversion)
_SUBSCRIPTIONS = msgspec.json.Decoder(SubscriptionsRecord)
NOW = ""  # the key of a project's now-record among its subscriptions records (a day is never empty)


@dataclass(frozen=True, slots=True)
class Change:
    """A new record: a campaign's tally (``kind`` "tally"), or a project's subscriptions record
    (``kind`` "subscriptions", ``campaign_id`` empty); ``record`` is its JSON."""

    project_id: str
    campaign_id: str
    record: bytes
    kind: str = "tally"


Listener = Callable[[Change], None]


class ResultTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[str, dict[str, tuple[int, bytes]]] = {}  # project -> campaign -> (version, json)
        self._conversions: dict[str, bytes] = {}
        self._subscriptions: dict[str, dict[str, tuple[int, bytes]]] = {}  # project -> NOW or day -> ...
        self._listeners: list[Listener] = []
        self.refused = 0  # records that did not decode (logged, skipped)

    # -- writes (the follower's thread) --------------------------------------------------------------

    def apply(self, kind: str, key: bytes | None, value: bytes, partition: int, offset: int) -> None:
        """Take in one record of the tallies, subscriptions or conversions topic."""
        try:
            if kind == "tallies":
                self._tally(value)
            elif kind == "subscriptions":
                self._subscription(value)
            elif kind == "conversions":
                conversion = _CONVERSION.decode(value)
                with self._lock:
                    self._conversions[conversion.conversion_id] = value
        except msgspec.DecodeError as exc:  # not JSON, or not the topic's struct (ValidationError)
            self.refused += 1
            log.warning("%s record at %d@%d skipped: %s", kind, partition, offset, exc)

    def _tally(self, value: bytes) -> None:
        tally = _TALLY.decode(value)
        with self._lock:
            campaigns = self._tallies.setdefault(tally.project_id, {})
            kept = campaigns.get(tally.campaign_id)
            if kept is not None and kept[0] > tally.version:
                return
            campaigns[tally.campaign_id] = (tally.version, value)
            listeners = list(self._listeners)
        change = Change(tally.project_id, tally.campaign_id, value)
        for listener in listeners:
            listener(change)

    def _subscription(self, value: bytes) -> None:
        record = _SUBSCRIPTIONS.decode(value)
        with self._lock:
            records = self._subscriptions.setdefault(record.project_id, {})
            which = record.day or NOW
            kept = records.get(which)
            if kept is not None and kept[0] > record.version:
                return
            records[which] = (record.version, value)
            listeners = list(self._listeners)
        change = Change(record.project_id, "", value, "subscriptions")
        for listener in listeners:
            listener(change)

    # -- reads (any thread) --------------------------------------------------------------------------

    def projects(self) -> list[str]:
        """Projects with tallies or subscriptions records."""
        with self._lock:
            return sorted(self._tallies.keys() | self._subscriptions.keys())

    def campaigns(self, project_id: str) -> list[bytes] | None:
        """The project's tallies in campaign order, or None for a project with none."""
        with self._lock:
            campaigns = self._tallies.get(project_id)
            if campaigns is None:
                return None
            return [campaigns[c][1] for c in sorted(campaigns)]

    def tally(self, project_id: str, campaign_id: str) -> bytes | None:
        with self._lock:
            kept = self._tallies.get(project_id, {}).get(campaign_id)
        return kept[1] if kept is not None else None

    def subscriptions(self, project_id: str) -> tuple[bytes | None, list[bytes]] | None:
        """The project's subscriptions: (its now-record or None, its day records, newest day first);
        None for a project with neither tallies nor subscriptions."""
        with self._lock:
            records = self._subscriptions.get(project_id)
            if records is None:
                return None if project_id not in self._tallies else (None, [])
            now = records.get(NOW)
            days = [records[d][1] for d in sorted(records, reverse=True) if d != NOW]
        return (now[1] if now is not None else None), days

    def conversion(self, project_id: str, conversion_id: str) -> bytes | None:
        with self._lock:
            value = self._conversions.get(conversion_id)
        if value is None or orjson.loads(value).get("project_id") != project_id:
            return None
        return value

    def sizes(self) -> tuple[int, int]:
        """(campaigns, conversions) held."""
        with self._lock:
            return sum(len(c) for c in self._tallies.values()), len(self._conversions)

    # -- listeners -----------------------------------------------------------------------------------

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every change; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop
