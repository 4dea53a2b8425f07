"""The read model of ``serve``: the latest tally per campaign and the latest record per conversion.

Records are kept as the JSON bytes the workers published (answers are built by joining them, with
no re-encoding); a tally replaces the kept one only when its version is not lower, so a stale
snapshot that lands last on the topic cannot roll a campaign back. Listeners hear every change,
from the follower's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import orjson

from attribution.core.outputs import Conversion
from attribution.core.tally import TallyRecord

log = logging.getLogger(__name__)
_TALLY = msgspec.json.Decoder(TallyRecord)
_CONVERSION = msgspec.json.Decoder(Conversion)


@dataclass(frozen=True, slots=True)
class Change:
    """A campaign's new tally: ``record`` is its JSON."""

    project_id: str
    campaign_id: str
    record: bytes


Listener = Callable[[Change], None]


class ResultTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[str, dict[str, tuple[int, bytes]]] = {}  # project -> campaign -> (version, json)
        self._conversions: dict[str, bytes] = {}
        self._listeners: list[Listener] = []
        self.refused = 0  # records that did not decode (logged, skipped)

    # -- writes (the follower's thread) --------------------------------------------------------------

    def apply(self, kind: str, key: bytes | None, value: bytes, partition: int, offset: int) -> None:
        """Take in one record of the tallies or conversions topic."""
        try:
            if kind == "tallies":
                self._tally(value)
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

    # -- reads (any thread) --------------------------------------------------------------------------

    def projects(self) -> list[str]:
        with self._lock:
            return sorted(self._tallies)

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
