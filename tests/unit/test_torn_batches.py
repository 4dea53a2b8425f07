"""Crash anywhere inside a batch's state write, restart, re-deliver: the result is still the reference.

A batch is written in steps (journal, users, counters, dirty marks) that a Redis Cluster cannot make
atomic. ``CrashingStore`` dies after a chosen number of single writes (in the middle of a step too),
a fresh processor (nothing remembered) takes over and the input is re-delivered from the last
committed batch, as a restarted worker or the next owner of the partitions would.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.core.model import Event
from attribution.processor import EngineConfig, Processor
from attribution.state.base import CounterWrite, OpenBatch, UserWrite
from attribution.state.memory import MemoryStore
from tests.support.harness import Run
from tests.support.reference import normalise_conversion, normalise_tally, reference
from tests.support.scenarios import PROJECT
from tests.unit.test_properties import GRACE_MS, SETTINGS, deliveries


class Crash(Exception):
    """The process died here."""


class CrashingStore(MemoryStore):
    """Dies when its budget of single writes runs out; ``budget=None`` never dies."""

    def __init__(self) -> None:
        super().__init__()
        self.budget: int | None = None
        self.crashes = 0

    def _spend(self) -> None:
        if self.budget is None:
            return
        if self.budget == 0:
            self.budget = None
            self.crashes += 1
            raise Crash
        self.budget -= 1

    def open_batches(self, batches: Sequence[OpenBatch]) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        for b in batches:
            self._spend()
            out.update(super().open_batches([b]))
        return out

    def write_users(self, writes: Sequence[UserWrite]) -> list[bool]:
        out = []
        for w in writes:
            self._spend()
            out += super().write_users([w])
        return out

    def settle(self, partition: int, seq: int, user_keys: Sequence[str], ttl_ms: int) -> list[int]:
        out = []
        for key in user_keys:
            self._spend()
            out += super().settle(partition, seq, [key], ttl_ms)
        return out

    def add_counters(self, counters: Sequence[CounterWrite], now_ms: int) -> None:
        for c in counters:
            self._spend()
            super().add_counters([c], now_ms)


def _run_with_crashes(batches: list[list[Event]], budgets: list[int]) -> tuple[Run, CrashingStore]:
    store = CrashingStore()
    run = Run([SETTINGS], store=store, grace_ms=GRACE_MS)
    records = [run.records(b) for b in batches]
    pending_budgets = list(budgets)
    committed = 0
    while committed < len(records):
        if store.budget is None and pending_budgets:
            store.budget = pending_budgets.pop(0)
        try:
            run.feed(records[committed])
            committed += 1  # the offsets are committed after the batch's state and outputs
        except Crash:
            # a new process: it remembers nothing and starts again from the committed offsets
            run.processor = Processor(store, run.keys, run.book, EngineConfig(grace_ms=GRACE_MS))
    return run, store


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.lists(st.integers(0, 12), min_size=1, max_size=6))
def test_a_crash_at_any_write_of_a_batch_loses_and_doubles_nothing(
    case: tuple[list[Event], list[list[Event]], int | None], budgets: list[int]
) -> None:
    events, batches, _ = case
    run, _store = _run_with_crashes(batches, budgets)
    want_tallies, want_conversions = reference(events, {PROJECT: SETTINGS})
    for (project, campaign), want in want_tallies.items():
        assert normalise_tally(run.tally(project, campaign)) == want, campaign
    got = {cid: normalise_conversion(c) for cid, c in run.latest_conversions().items()}
    assert got == {cid: normalise_conversion(c) for cid, c in want_conversions.items()}
    # every campaign whose counters exist is marked for publication until a publisher acks it
    assert set(run.store.dirty(1000)) >= {run.keys.member(p, c) for p, c in want_tallies}


def test_the_crash_harness_really_crashes_inside_batches() -> None:
    """The property above is vacuous unless crashes land between the steps of a batch."""
    from tests.support.scenarios import goal, send

    events: list[Event] = [
        send("s1", "c-push", "d0a", 0, "u0", "push"),
        send("s2", "c-web", "d1a", 0, "u1", "web_push"),
        goal("g1", "signup", "d0a", 1000, "u0"),
        goal("g2", "signup", "d1a", 1000, "u1"),
    ]
    for budget in range(8):
        run, store = _run_with_crashes([events[:2], events[2:]], [budget])
        assert store.crashes == 1, budget
        want_tallies, _ = reference(events, {PROJECT: SETTINGS})
        for (project, campaign), want in want_tallies.items():
            assert normalise_tally(run.tally(project, campaign)) == want, (budget, campaign)
