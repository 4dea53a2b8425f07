"""Users held in memory between batches (``attribution.state.cache``): the result never depends on
them. Whatever the cache size (none, one that evicts all the time, one that holds everyone), and
whoever else writes the same partitions in between, the outputs are the reference's; and a user
whose cached state is current costs no load."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.core.model import Event
from attribution.errors import StateConflict
from attribution.state.base import Loaded, UserWrite
from attribution.state.cache import EXPIRY_MARGIN_MS, UserCache
from attribution.state.memory import MemoryStore
from tests.support.compare import assert_matches_reference
from tests.support.harness import Run
from tests.support.scenarios import PROJECT, goal, send
from tests.unit.test_properties import GRACE_MS, SETTINGS, deliveries

#: none, a cache that holds about one small user (evictions all the time), plenty
SIZES = [0, 3_000, 64 << 20]


class CountingStore(MemoryStore):
    """Remembers which user keys each load asked Redis for."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[list[str]] = []

    def load(self, user_keys: Sequence[str], partitions: Sequence[int]) -> Loaded:
        self.loaded.append(list(user_keys))
        return super().load(user_keys, partitions)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.sampled_from(SIZES))
def test_the_result_is_the_reference_whatever_the_cache_holds(
    case: tuple[list[Event], list[list[Event]], int | None], cache_bytes: int
) -> None:
    events, batches, replay = case
    run = Run([SETTINGS], grace_ms=GRACE_MS, cache_bytes=cache_bytes).deliver(batches, replay)
    assert_matches_reference(run, events, SETTINGS)
    cache = run.processor.cache
    assert cache.used <= cache.max_bytes or len(cache.entries) <= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.lists(st.booleans(), min_size=1, max_size=30))
def test_two_workers_taking_turns_on_the_same_partitions_never_use_a_stale_state(
    case: tuple[list[Event], list[list[Event]], int | None], turns: list[bool]
) -> None:
    """A and B write the same partitions in turns (rebalances back and forth, without the revoke
    that would clear A's cache): each must see from the journal that the other wrote in between."""
    events, batches, _ = case
    store = MemoryStore()
    a = Run([SETTINGS], store=store, grace_ms=GRACE_MS, identities=False)
    b = Run([SETTINGS], store=store, keys=a.keys, grace_ms=GRACE_MS, identities=False)
    b.offsets, b.emitted = a.offsets, a.emitted  # one input, one output topic: whoever holds them
    for i, batch in enumerate(batches):
        (a if turns[i % len(turns)] else b).feed(a.records(batch))
    assert_matches_reference(a, events, SETTINGS)


def test_a_cached_user_needs_no_load_and_a_new_one_on_a_fresh_partition_neither() -> None:
    store = CountingStore()
    run = Run([SETTINGS], store=store, grace_ms=GRACE_MS, identities=False)  # no link batches
    run.feed_events([send("s1", "c-push", "d0a", 1_000, "u0", "push")])
    assert store.loaded == [[run.keys.user(PROJECT, "u0")]]  # the first sight: the journal is unknown
    run.feed_events(
        [send("s2", "c-push", "d0a", 2_000, "u0", "push"), goal("g1", "signup", "d0a", 3_000, "u0")]
    )
    assert store.loaded[1] == []  # held in memory: no load, no decode
    # a user never seen, on a partition this process has written since its journal was empty
    run.feed_events([send("s3", "c-push", "d0b", 4_000, "u0b", "push")])
    assert store.loaded[2] == []
    assert run.processor.cache.hits == 2


def test_a_revoke_or_a_failed_write_forgets_what_it_held() -> None:
    store = CountingStore()
    run = Run([SETTINGS], store=store, grace_ms=GRACE_MS)
    key = run.keys.user(PROJECT, "u0")
    run.feed_events([send("s1", "c-push", "d0a", 1_000, "u0", "push")])
    assert key in run.processor.cache.entries
    run.processor.ledger.forget([0, 1])  # a revoke
    assert not run.processor.cache.entries
    run.feed_events([send("s2", "c-push", "d0a", 2_000, "u0", "push")])
    assert store.loaded[-1] == [key]
    assert key in run.processor.cache.entries

    def refuse(writes: Sequence[UserWrite]) -> list[bool]:
        return [False for _ in writes]

    store.write_users = refuse  # type: ignore[method-assign]
    with pytest.raises(StateConflict):
        run.feed_events([send("s3", "c-push", "d0a", 3_000, "u0", "push")])
    assert key not in run.processor.cache.entries  # changed in memory, never written


def test_the_cache_stays_within_its_budget_and_evicts_the_least_recently_written() -> None:
    from attribution.core.user_state import UserState

    clock = [0]
    cache = UserCache(10_000, lambda: clock[0])
    for i in range(100):
        cache.put(f"k{i}", i % 2, UserState(), 100, 10**12)
        assert cache.used <= 10_000
    assert "k99" in cache.entries and "k0" not in cache.entries
    assert cache.evictions > 0
    cache.mark_complete(0)
    assert cache.lookup([("k-new", 0)]) == {"k-new": None}  # complete: known absent
    cache.put("k100", 0, UserState(), 100, 60_000)
    assert cache.lookup([("k-new", 0)]) == {"k-new": None}
    cache.put("big", 1, UserState(), 1_000, 60_000)  # evicts everyone else, k100 of partition 0 too
    assert "k100" not in cache.entries
    assert cache.lookup([("k-new", 0)]) == {}  # not complete any more: ask Redis
    cache.put("k100", 0, UserState(), 100, 60_000)
    assert set(cache.lookup([("k100", 0)])) == {"k100"}
    clock[0] = 60_000 - EXPIRY_MARGIN_MS  # Redis expires it at 60 s: given up a little before
    assert cache.lookup([("k100", 0)]) == {}
