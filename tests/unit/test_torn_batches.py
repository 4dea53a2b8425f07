"""Crash anywhere inside a batch's state write, restart, re-deliver: the result is still the reference.

A batch is written in steps (journal, users, counters, dirty marks) that a Redis Cluster cannot make
atomic. ``CrashingStore`` dies after a chosen number of single writes (in the middle of a step too),
a fresh processor (nothing remembered) takes over and the input is re-delivered from the last
committed batch, as a restarted worker or the next owner of the partitions would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.core.model import Event
from attribution.engine.processor import EngineConfig, Processor
from attribution.errors import LostState, StateConflict
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
            config = EngineConfig(grace_ms=GRACE_MS, cache_bytes=run.cache_bytes)  # an empty cache
            run.processor = Processor(store, run.keys, run.book, config)
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


class TakeoverStore(MemoryStore):
    """Runs ``takeover`` (another worker's whole run) in the middle of a batch's user writes."""

    def __init__(self) -> None:
        super().__init__()
        self.after_writes: int | None = None
        self.takeover: Callable[[], None] | None = None

    def write_users(self, writes: Sequence[UserWrite]) -> list[bool]:
        out = []
        for w in writes:
            if self.after_writes is not None and self.takeover is not None:
                if self.after_writes == 0:
                    takeover, self.takeover = self.takeover, None
                    takeover()
                self.after_writes -= 1
            out += super().write_users([w])
        return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.integers(0, 20), st.integers(0, 6))
def test_a_zombie_finishing_its_batch_after_the_next_owner_took_over_changes_nothing(
    case: tuple[list[Event], list[list[Event]], int | None], at_batch: int, after_writes: int
) -> None:
    """Worker A stalls in the middle of writing a batch (a GC pause, a lost session); worker B gets the
    partitions, recovers A's torn batch and processes everything from A's last commit; then A wakes
    up and carries on. A's late writes must be refused and nothing counted twice."""
    events, batches, _ = case
    store = TakeoverStore()
    a = Run([SETTINGS], store=store, grace_ms=GRACE_MS)
    b = Run([SETTINGS], store=store, keys=a.keys, grace_ms=GRACE_MS)
    records = [a.records(batch) for batch in batches]
    at = at_batch % len(records)
    for r in records[:at]:
        a.feed(r)

    def b_takes_over() -> None:
        for r in records[at:]:
            b.feed(r)

    store.after_writes, store.takeover = after_writes, b_takes_over
    with contextlib.suppress(StateConflict):  # A's outputs are not committed after a conflict
        a.feed(records[at])
    if store.takeover is not None:  # the batch had fewer writes than that: B comes after A
        b_takes_over()
    want_tallies, want_conversions = reference(events, {PROJECT: SETTINGS})
    for (project, campaign), want in want_tallies.items():
        assert normalise_tally(b.tally(project, campaign)) == want, campaign
    latest = {c["conversion_id"]: c for c in [*a.emitted, *b.emitted]}
    b_latest = {c["conversion_id"]: c for c in b.emitted}
    latest.update(b_latest)  # B's records come after A's on the topic
    got = {cid: normalise_conversion(c) for cid, c in latest.items()}
    assert got == {cid: normalise_conversion(c) for cid, c in want_conversions.items()}


def test_a_journal_that_vanishes_under_a_running_worker_is_lost_state() -> None:
    """Even after the partition moved away and back (forget), a journal this process saw must not
    vanish: Redis lost its data, or a rebuild wiped it under a worker that should have stopped."""
    from tests.support.scenarios import send

    run = Run([SETTINGS], grace_ms=GRACE_MS)
    run.feed_events([send("s1", "c-push", "d0a", 0, "u0", "push")])
    assert isinstance(run.store, MemoryStore)
    run.processor.ledger.forget([0, 1])
    run.store.journals.clear()
    with pytest.raises(LostState, match="vanished"):
        run.feed_events(
            [send("s2", "c-push", "d0a", 1, "u0", "push"), send("s3", "c-push", "d1a", 1, "u1", "push")]
        )
