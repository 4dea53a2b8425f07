"""RedisStore and its Lua scripts on real servers (valkey 8.1, Redis 7.0, a 3-master valkey cluster),
and the in-memory twin that the unit tests use.

Every test runs once per server. Keys live under a per-test prefix (per-example for hypothesis tests)
and are deleted afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal, localcontext
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster
from redis.crc import key_slot

from attribution.core.model import Event
from attribution.core.money import fmt
from attribution.core.tally import snapshot
from attribution.errors import BadInput, LostState
from attribution.state import generation
from attribution.state.base import CounterWrite, OpenBatch, UserWrite
from attribution.state.keys import Keys
from attribution.state.memory import MemoryStore
from attribution.state.redis_store import RedisStore
from attribution.state.router import Client, Router, connect
from attribution.state.scripts import SCRIPTS
from tests.support.harness import Run
from tests.support.scenarios import PROJECT, click, goal, send
from tests.support.scenarios import settings as scenario_settings
from tests.unit.test_properties import CAMPAIGNS, GRACE_MS, SETTINGS, deliveries

pytestmark = pytest.mark.integration

TALLY_TTL_MS = 3_600_000
HOUR_MS = 3_600_000

SERVERS = {"valkey": "redis_url", "redis7": "redis_server_url", "cluster": "redis_cluster_urls"}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(params=sorted(SERVERS))
def server_url(request: pytest.FixtureRequest) -> str:
    """The URL of each server in turn: a valkey cluster, Redis 7.0, then valkey 8.1."""
    value = request.getfixturevalue(SERVERS[request.param])
    return value[0] if isinstance(value, list) else cast(str, value)


@pytest.fixture
def client(server_url: str, unique: str) -> Iterator[Client]:
    """A client on the server under test; deletes every key of this test afterwards."""
    c = connect(server_url)
    try:
        yield c
    finally:
        for conn in Router(c).primaries():
            for key in list(conn.scan_iter(match=f"{unique}*", count=1000)):
                conn.unlink(key)
            conn.close()
        c.close()


@pytest.fixture
def keys(unique: str) -> Keys:
    return Keys(prefix=unique)


@pytest.fixture
def store(client: Client, keys: Keys) -> RedisStore:
    return RedisStore(client, keys, TALLY_TTL_MS)


# --- helpers -------------------------------------------------------------------------------------


def hgetall(client: Client, key: str) -> dict[str, str]:
    raw = cast(dict[bytes, bytes], client.hgetall(key))
    return {k.decode(): v.decode() for k, v in raw.items()}


def pttl(client: Client, key: str) -> int:
    return int(client.pttl(key))


_seq = itertools.count(1)


def counter(keys: Keys, campaign: str, **kwargs: Any) -> CounterWrite:
    """A counter write of a fresh batch (a new seq on partition 0) unless ``seq`` is given."""
    kwargs.setdefault("seq", next(_seq))
    return CounterWrite(
        key=keys.campaign(PROJECT, campaign),
        member=Keys.member(PROJECT, campaign),
        project_key=keys.project_campaigns(PROJECT),
        **kwargs,
    )


# --- exact decimal addition in counters.lua --------------------------------------------------------


@st.composite
def deltas(draw: st.DrawFn) -> Decimal:
    """Up to 30 digits, up to 12 of them fractional, either sign, zero included (also ``-0.000``)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.sampled_from(
                [
                    Decimal("0"),
                    Decimal("-0.000"),
                    Decimal("1.500"),
                    Decimal("1E+3"),
                    Decimal("0.000000000001"),
                    Decimal("-0.000000000001"),
                    Decimal("999999999999999999.999999999999"),
                    Decimal("-999999999999999999.999999999999"),
                ]
            )
        )
    places = draw(st.integers(0, 12))
    magnitude = draw(st.integers(0, 10**30 - 1))
    sign = int(draw(st.booleans()))
    return Decimal((sign, tuple(int(c) for c in str(magnitude)), -places))


_examples = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(amounts=st.lists(deltas(), min_size=1, max_size=12))
def test_counters_add_decimals_exactly(store: RedisStore, amounts: list[Decimal]) -> None:
    campaign = f"c{next(_examples)}"  # a fresh key per example
    key = store.keys.campaign(PROJECT, campaign)
    one_by_one, together = "r|purchase|send|KRW", "r|purchase|click|USD"
    # one_by_one: one call per delta; together: every delta in one call (entries of other partitions)
    for amount in amounts:
        store.add_counters([counter(store.keys, campaign, revenue={one_by_one: amount})], 1)
    store.add_counters(
        [
            counter(store.keys, campaign, partition=p + 1, revenue={together: a})
            for p, a in enumerate(amounts)
        ],
        1,
    )
    with localcontext() as ctx:
        ctx.prec = 200  # the exact sum: the default 28 digits would round 30-digit amounts
        total = sum(amounts, Decimal(0))
    fields = store.counters([key])[0]
    assert fields[one_by_one] == fmt(total)
    assert fields[together] == fmt(total)
    # one version step per applied entry, starting from now * 1000
    assert fields["version"] == str(1000 + 2 * len(amounts) - 1)


def test_decimal_canonical_forms_in_lua(store: RedisStore) -> None:
    key = store.keys.campaign(PROJECT, "canon")
    steps = [
        ("0.10", "0.1"),
        ("-0.1", "0"),
        ("-2.50", "-2.5"),
        ("2.5", "0"),
        ("100", "100"),
        ("-99.999", "0.001"),
        ("-0.002", "-0.001"),
        ("1000000000000000000000000000000", "999999999999999999999999999999.999"),
    ]
    for delta, want in steps:
        store.add_counters([counter(store.keys, "canon", revenue={"r|e|send|KRW": Decimal(delta)})], 1)
        assert store.counters([key])[0]["r|e|send|KRW"] == want, delta


# --- the batch protocol: journal, users, counters ---------------------------------------------------


def test_a_journal_opens_each_seq_once_and_its_clock_only_moves_forward(store: RedisStore) -> None:
    assert store.load([], [0, 1]).journals == {0: None, 1: None}
    assert store.open_batches([OpenBatch(0, 0, 5000, b"one"), OpenBatch(1, 0, 7, b"")]) == {0: 1, 1: 1}
    # a second writer that read seq 0 too is refused and writes nothing
    assert store.open_batches([OpenBatch(0, 0, 9000, b"other")]) == {0: None}
    journal = store.read_journal(0)
    assert journal is not None and (journal.seq, journal.clock_ts, journal.body) == (1, 5000, b"one")
    assert store.open_batches([OpenBatch(0, 1, 3000, b"two")]) == {0: 2}
    big = 2**53  # the largest event ts the model accepts still compares exactly
    assert store.open_batches([OpenBatch(0, 2, big - 1, b"")]) == {0: 3}
    assert store.open_batches([OpenBatch(0, 3, big - 2, b"")]) == {0: 4}
    heads = store.load([], [0, 1]).journals
    assert heads[0] is not None and (heads[0].seq, heads[0].clock_ts) == (4, big - 1)
    assert heads[1] is not None and (heads[1].seq, heads[1].clock_ts) == (1, 7)


def test_user_writes_are_fenced_by_partition_and_seq(store: RedisStore, client: Client, keys: Keys) -> None:
    a, b = keys.user(PROJECT, "a"), keys.user(PROJECT, "b")
    assert store.load([a], []).users == {a: (None, None)}
    assert store.write_users([UserWrite(a, 3, 1, b"one", HOUR_MS), UserWrite(b, 3, 1, b"b", HOUR_MS)]) == [
        True,
        True,
    ]
    assert store.load([a], []).users == {a: (b"one", "3:1")}
    # a replay of batch 1, or a late write of an older batch, is refused
    assert store.write_users(
        [UserWrite(a, 3, 1, b"again", HOUR_MS), UserWrite(b, 3, 0, b"old", HOUR_MS)]
    ) == [
        False,
        False,
    ]
    assert store.write_users([UserWrite(a, 3, 2, b"two", 2 * HOUR_MS)]) == [True]
    assert store.load([a, b], []).users == {a: (b"two", "3:2"), b: (b"b", "3:1")}
    assert HOUR_MS < pttl(client, a) <= 2 * HOUR_MS
    # another partition's seq does not compare (the input's partition count changed)
    assert store.write_users([UserWrite(a, 4, 1, b"moved", HOUR_MS)]) == [True]
    # a TTL that already ran out in event time still gets a positive PEXPIRE (1 ms), not 0 or less
    c = keys.user(PROJECT, "c")
    store.write_users([UserWrite(c, 0, 1, b"x", -5)])
    assert pttl(client, c) in (-2, 0, 1)


def test_settle_finds_written_users_and_closes_the_batch_for_the_others(
    store: RedisStore, client: Client, keys: Keys
) -> None:
    w, n, later, absent = (keys.user(PROJECT, u) for u in ("written", "not", "later", "absent"))
    store.write_users([UserWrite(w, 0, 5, b"w5", HOUR_MS), UserWrite(n, 0, 4, b"n4", HOUR_MS)])
    store.write_users([UserWrite(later, 0, 6, b"l6", HOUR_MS)])
    assert store.settle(0, 5, [w, n, later, absent], 999_000) == [1, 0, 2, 0]
    # settling twice answers the same: a closed user stays closed
    assert store.settle(0, 5, [w, n, absent], 999_000) == [1, 0, 0]
    # the old owner's late writes of batch 5 are refused for the closed users; their state is intact
    assert store.write_users(
        [UserWrite(n, 0, 5, b"late", HOUR_MS), UserWrite(absent, 0, 5, b"late", HOUR_MS)]
    ) == [
        False,
        False,
    ]
    assert store.load([n, absent], []).users == {n: (b"n4", "0:5-"), absent: (None, "0:5-")}
    assert 0 < pttl(client, absent) <= 999_000  # a mark-only hash expires too
    assert store.write_users([UserWrite(n, 0, 6, b"n6", HOUR_MS)]) == [True]


def test_counters_apply_each_partition_batch_once(store: RedisStore, client: Client, keys: Keys) -> None:
    key = keys.campaign(PROJECT, "x")
    first = counter(
        keys,
        "x",
        partition=0,
        seq=1,
        counts={"sends": 2, "c|purchase|send": 1},
        as_of_ts=100,
        channels=["push"],
    )
    store.add_counters([first], 7)
    store.add_counters([first], 8)  # a replay of (partition 0, seq 1): no change
    store.add_counters(
        [
            counter(
                keys,
                "x",
                partition=1,
                seq=1,
                counts={"sends": 3, "failed": 1},
                as_of_ts=50,
                channels=["kakao"],
            )
        ],
        8,
    )
    store.add_counters(
        [counter(keys, "x", partition=0, seq=2, counts={"c|purchase|send": -1}, as_of_ts=200)], 9
    )
    store.add_counters(
        [counter(keys, "x", partition=0, seq=2, counts={"sends": 100}, channels=["sms"])], 9
    )  # replayed seq: its channel is not recorded either
    store.add_counters([counter(keys, "x", partition=0, seq=3)], 10)  # touched only: no counters, as_of 0
    assert hgetall(client, key) == {
        "sends": "5",
        "failed": "1",
        "c|purchase|send": "0",
        "as_of": "200",
        "ch|push": "1",
        "ch|kakao": "1",
        "f|0": "3",
        "f|1": "1",
        "version": "10000",  # max(previous + 1, now * 1000) at the last apply (now = 10)
    }
    # the dirty mark holds the newest version
    assert store.dirty(10) == [Keys.member(PROJECT, "x")]
    assert client.zscore(keys.dirty, Keys.member(PROJECT, "x")) == 10000.0
    assert 0 < pttl(client, key) <= TALLY_TTL_MS
    assert client.smembers(keys.project_campaigns(PROJECT)) == {Keys.member(PROJECT, "x").encode()}


def test_the_channel_set_is_recorded_from_batches_with_different_channels(
    store: RedisStore, client: Client, keys: Keys
) -> None:
    """Every channel a campaign's events came on is kept (not the first one), whatever the order of
    the batches; a hash written by an earlier version (its first channel in ``channel``) joins in."""
    key = keys.campaign(PROJECT, "mixed")
    client.hset(key, "channel", "sms")  # what the previous layout wrote for the first batch
    store.add_counters(
        [counter(keys, "mixed", partition=0, seq=1, counts={"sends": 1}, channels=["push"])], 1
    )
    store.add_counters(
        [counter(keys, "mixed", partition=1, seq=1, counts={"sends": 1}, channels=["kakao", "push"])], 2
    )
    store.add_counters(
        [counter(keys, "mixed", partition=0, seq=2, channels=["push"])], 3
    )  # again: idempotent
    fields = hgetall(client, key)
    assert {f: v for f, v in fields.items() if f.startswith("ch")} == {
        "channel": "sms",
        "ch|push": "1",
        "ch|kakao": "1",
    }
    assert snapshot(PROJECT, "mixed", fields, scenario_settings())["channels"] == ["kakao", "push", "sms"]


def test_two_batches_on_two_channels_give_the_tally_of_either_order(client: Client, unique: str) -> None:
    """Through the processor: the campaign's sends come in two batches on two channels, in both
    orders; the tallies (channel set, primary basis, rate) are the same, and the twin agrees."""
    kakao: list[Event] = [send("s1", "mixed", "d1", 0, user="u1", channel="kakao")]
    push: list[Event] = [send("s2", "mixed", "d2", 5, user="u2"), click("k2", "mixed", "d2", 6, user="u2")]
    buys: list[Event] = [goal("g2", "purchase", "d2", 10, user="u2", price=3, qty=1)]
    tallies = []
    for i, batches in enumerate([[kakao, push, buys], [push, buys, kakao]]):
        keys = Keys(prefix=f"{unique}-order{i}")
        for store in (RedisStore(client, keys, TALLY_TTL_MS), MemoryStore()):
            run = Run([scenario_settings()], store=store, keys=keys).deliver(batches)
            t = run.tally(PROJECT, "mixed")
            tallies.append({k: v for k, v in t.items() if k not in ("version", "as_of_ts")})
    assert all(t == tallies[0] for t in tallies), tallies
    assert tallies[0]["channels"] == ["kakao", "push"]
    assert tallies[0]["events"]["purchase"]["primary"] == "click"  # push's basis, push before kakao
    assert tallies[0]["events"]["purchase"]["rate"] == 1.0


def test_dirty_members_come_in_version_order(store: RedisStore, keys: Keys) -> None:
    store.add_counters([counter(keys, "b")], 20)
    store.add_counters([counter(keys, "a"), counter(keys, "c")], 30)
    assert store.dirty(10) == [Keys.member(PROJECT, m) for m in "bac"]
    store.add_counters([counter(keys, "b")], 40)
    assert store.dirty(10) == [Keys.member(PROJECT, m) for m in "acb"]
    assert store.dirty(1) == [Keys.member(PROJECT, "a")]


# --- ack ----------------------------------------------------------------------------------------------


def test_ack_removes_only_campaigns_whose_last_record_is_the_newest_version(
    store: RedisStore, keys: Keys
) -> None:
    x, y = keys.campaign(PROJECT, "x"), keys.campaign(PROJECT, "y")
    mx, my = Keys.member(PROJECT, "x"), Keys.member(PROJECT, "y")
    store.add_counters([counter(keys, "x", counts={"sends": 1}), counter(keys, "y")], 1)
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 2)
    vx, vy = (int(h["version"]) for h in store.counters([x, y]))
    assert vx > vy
    assert store.ack([]) == 0
    assert store.ack([(mx, vx - 1, 10)]) == 0  # x changed after the published snapshot: stays dirty
    assert sorted(store.dirty(10)) == sorted([mx, my])
    assert store.ack([(mx, vx, 11), (my, vy - 1, 12)]) == 1  # x acknowledged; y is newer than published
    assert store.dirty(10) == [my]
    assert store.ack([(my, vy + 5, 13)]) == 1  # a newer published version than stored also acknowledges
    assert store.ack([(my, vy + 5, 14)]) == 0  # already gone
    assert store.dirty(10) == []
    store.add_counters([counter(keys, "gone")], 3)
    store.client.delete(keys.campaign(PROJECT, "gone"))  # expired: -1 forgets the mark
    assert store.ack([(Keys.member(PROJECT, "gone"), -1, -1)]) == 1


def test_a_stale_snapshot_appended_after_the_newest_keeps_the_mark(store: RedisStore, keys: Keys) -> None:
    # A reads v1; a batch makes v2; B reads v2, appends it at offset 7 and acks: the mark goes.
    # A's v1 reaches the broker after B's, at offset 8: the compacted topic now ends with v1, so
    # A's ack must bring the mark back, whichever of the two acks comes first.
    x, mx = keys.campaign(PROJECT, "x"), Keys.member(PROJECT, "x")
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 1)
    v1 = int(store.counters([x])[0]["version"])
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 2)
    v2 = int(store.counters([x])[0]["version"])
    assert store.ack([(mx, v2, 7)]) == 1
    assert store.ack([(mx, v1, 8)]) == 0
    assert store.dirty(10) == [mx]  # marked again: v2 will be appended after v1
    # the other order of acks: A's later record acked first, then B's earlier one
    y, my = keys.campaign(PROJECT, "y"), Keys.member(PROJECT, "y")
    store.add_counters([counter(keys, "y", counts={"sends": 1})], 1)
    w1 = int(store.counters([y])[0]["version"])
    store.add_counters([counter(keys, "y", counts={"sends": 1})], 2)
    w2 = int(store.counters([y])[0]["version"])
    assert store.ack([(my, w1, 8)]) == 0  # v1 is last on the topic and older than the newest
    assert store.ack([(my, w2, 7)]) == 0  # B's v2 is not the last record: the mark stays
    assert sorted(store.dirty(10)) == sorted([mx, my])
    assert store.ack([(my, w2, 9)]) == 1  # republished after A's: now it is the last record


def test_a_change_after_the_snapshot_was_read_keeps_the_mark(store: RedisStore, keys: Keys) -> None:
    # publisher A read v1; a batch made v2 and raised the mark; A acks v1: the mark must stay
    x, mx = keys.campaign(PROJECT, "x"), Keys.member(PROJECT, "x")
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 1)
    v1 = int(store.counters([x])[0]["version"])
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 2)
    assert store.ack([(mx, v1, 1)]) == 0
    assert store.dirty(10) == [mx]


def test_versions_never_go_back_when_the_counter_hash_expires(store: RedisStore, keys: Keys) -> None:
    x = keys.campaign(PROJECT, "x")
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 1_700_000_000_000)
    before = int(store.counters([x])[0]["version"])
    store.client.delete(x)  # the TTL ran out
    store.add_counters([counter(keys, "x", counts={"sends": 1})], 1_700_000_000_001)
    assert int(store.counters([x])[0]["version"]) > before


# --- NOSCRIPT ----------------------------------------------------------------------------------------


def test_scripts_are_reloaded_after_script_flush(store: RedisStore, client: Client, keys: Keys) -> None:
    user = keys.user(PROJECT, "u")
    for step in range(3):
        for conn in store.router.primaries():
            conn.script_flush()
            assert not any(conn.script_exists(*(s.sha for s in SCRIPTS)))
        if step == 0:
            assert store.write_users([UserWrite(user, 0, 1, b"s", HOUR_MS)]) == [True]
        elif step == 1:
            assert store.load([user], []).users == {user: (b"s", "0:1")}
        else:
            store.add_counters([counter(keys, "x")], 2)
            version = int(store.counters([keys.campaign(PROJECT, "x")])[0]["version"])
            assert store.ack([(Keys.member(PROJECT, "x"), version, 1)]) == 1


# --- generation markers --------------------------------------------------------------------------------


def test_lost_markers_are_detected_and_a_wipe_starts_a_fresh_generation(
    store: RedisStore, keys: Keys
) -> None:
    with pytest.raises(LostState, match="committed offsets"):
        generation.establish(store, lambda: True)
    first = generation.establish(store, lambda: False)
    assert generation.establish(store, lambda: True) == first  # adopted, not replaced
    assert generation.verify(store, first) == first
    found = store.generation()
    assert found.total == (16385 if store.router.cluster else 1)
    # one lost marker (a cluster node lost its data) is lost state
    victim = keys.generation_marker("g7") if store.router.cluster else keys.generation
    store.client.delete(victim)
    with pytest.raises(LostState, match="missing"):
        generation.verify(store, first)
    with pytest.raises(LostState, match=r"missing|no generation marker"):
        generation.establish(store, lambda: True)
    # without consumed history, a start that died while setting the markers just completes them
    # (on one server the only marker is the leader: that is a first start again)
    completed = generation.establish(store, lambda: False)
    assert (completed == first) == store.router.cluster
    first = completed
    store.add_counters([counter(keys, "x")], 1)
    assert store.wipe() >= 3
    assert store.counters([keys.campaign(PROJECT, "x")]) == [{}]
    second = generation.establish(store, lambda: False)
    assert second != first
    with pytest.raises(LostState, match="changed"):
        generation.verify(store, first)


def test_state_of_another_layout_is_refused_not_misread(store: RedisStore) -> None:
    """Layout 1 kept user states in hashes; reading them as layout 2 strings would fail (WRONGTYPE) or
    misread them. A generation says its layout, so a worker stops with a way out instead."""
    assert store.init_generation("0123456789abcdef") == "0123456789abcdef"  # layout 1: no "v" prefix
    with pytest.raises(LostState, match=r"layout 1 .* reads layout 3: .*attribution rebuild"):
        generation.establish(store, lambda: True)
    store.wipe()
    assert generation.layout_of(generation.establish(store, lambda: False)) == generation.LAYOUT == 3


# --- the in-memory twin ----------------------------------------------------------------------------


def _run(store: Any, keys: Keys, batches: list[list[Event]], replay: int | None) -> Run:
    return Run([SETTINGS], store=store, keys=keys, grace_ms=GRACE_MS).deliver(batches, replay)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=deliveries())
def test_memory_store_agrees_with_redis(
    client: Client, unique: str, case: tuple[list[Event], list[list[Event]], int | None]
) -> None:
    _, batches, replay = case
    keys = Keys(prefix=f"{unique}-{next(_examples)}")  # a fresh prefix per example
    memory = MemoryStore()
    in_redis = _run(RedisStore(client, keys, TALLY_TTL_MS), keys, batches, replay)
    in_memory = _run(memory, keys, batches, replay)

    for campaign in CAMPAIGNS:
        assert in_redis.tally(PROJECT, campaign) == in_memory.tally(PROJECT, campaign), campaign
    assert in_redis.latest_conversions() == in_memory.latest_conversions()
    assert in_redis.emitted == in_memory.emitted
    assert in_redis.dead == in_memory.dead
    # the raw state agrees too: counter hashes, dirty set, user states, journals
    campaign_keys = [keys.campaign(PROJECT, c) for c in CAMPAIGNS]
    assert in_redis.store.counters(campaign_keys) == memory.counters(campaign_keys)
    assert in_redis.store.dirty(100) == memory.dirty(100)
    user_keys = [keys.user(PROJECT, u) for u in ("u0", "u1", "u2", "d3a", "d3b")]
    assert in_redis.store.load(user_keys, [0, 1]) == memory.load(user_keys, [0, 1])


def test_touch_project_republishes_every_campaign_of_the_project_with_a_new_version(
    store: RedisStore, keys: Keys
) -> None:
    x, y = keys.campaign(PROJECT, "x"), keys.campaign(PROJECT, "y")
    mx, my = Keys.member(PROJECT, "x"), Keys.member(PROJECT, "y")
    store.add_counters([counter(keys, "x", counts={"sends": 1}), counter(keys, "y", counts={"sends": 1})], 1)
    versions = [int(h["version"]) for h in store.counters([x, y])]
    store.ack([(mx, versions[0], 1), (my, versions[1], 2)])
    assert store.dirty(10) == []
    assert store.touch_project(keys.project_campaigns(PROJECT), 5) == 2
    assert sorted(store.dirty(10)) == sorted([mx, my])
    assert all(int(h["version"]) > v for h, v in zip(store.counters([x, y]), versions, strict=True))
    assert store.touch_project(keys.project_campaigns("another"), 6) == 0


def test_an_error_raised_by_the_script_is_bad_input_not_a_redis_failure(
    store: RedisStore, keys: Keys
) -> None:
    with pytest.raises(BadInput, match="bad decimal"):
        store.add_counters([counter(keys, "x", revenue={"r|e|send|KRW": Decimal("NaN")})], 1)
    assert store.counters([keys.campaign(PROJECT, "x")]) == [{}]  # nothing written


def test_redis_errors_inside_a_script_are_not_bad_input(
    store: RedisStore, client: Client, keys: Keys
) -> None:
    """OOM (and READONLY, NOPERM...) hit by a command inside a script carry 'user_script' in their
    text: they must stop the batch, never dead-letter its events."""
    if store.router.cluster:
        pytest.skip("maxmemory is per node; the standalone servers cover the script error path")
    old = cast(dict[str, str], client.config_get("maxmemory"))["maxmemory"]
    client.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory") as info:
            store.add_counters([counter(keys, "oom", counts={"sends": 1})], 1)
        assert not isinstance(info.value, BadInput)
    finally:
        client.config_set("maxmemory", old)


def test_a_slot_being_resharded_is_followed_with_asking(store: RedisStore, keys: Keys) -> None:
    """While a reshard moves a slot, its source answers ASK for keys it no longer has; the call must
    go to the importing node preceded by ASKING (redis-py's cluster pipeline does not do it for us)."""
    if not store.router.cluster:
        pytest.skip("a reshard needs a cluster")
    cluster = cast(RedisCluster, store.client)
    user = keys.user(PROJECT, "migrating")
    slot = key_slot(user.encode())
    source = cluster.nodes_manager.get_node_from_slot(slot)
    primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
    target = next(n for n in primaries if n.name != source.name)
    src, dst = source.redis_connection, target.redis_connection
    src_id, dst_id = (str(c.execute_command("CLUSTER MYID")) for c in (src, dst))
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id.removeprefix("b'").strip("'"))
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id.removeprefix("b'").strip("'"))
    try:
        assert store.write_users([UserWrite(user, 0, 1, b"moved", HOUR_MS)]) == [True]
        assert store.load([user], []).users == {user: (b"moved", "0:1")}
        with pytest.raises(redis.exceptions.AskError):
            src.exists(user)  # the source does not hold it: it went to the importing node
    finally:
        pipe = dst.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.unlink(user)
        pipe.execute()
        for conn in (src, dst):
            conn.execute_command("CLUSTER SETSLOT", slot, "STABLE")


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_kept_settings_only_move_forward(store: RedisStore, kind: str) -> None:
    """A worker never goes back to an older settings version: Redis (and its twin) keep the newest."""
    kept: RedisStore | MemoryStore = store if kind == "redis" else MemoryStore()
    assert kept.save_settings("shop|1", 3, b'{"version":3}')
    assert not kept.save_settings("shop|1", 2, b'{"version":2}')
    assert not kept.save_settings("shop|1", 3, b'{"version":3,"again":1}')
    assert kept.save_settings("other", 1, b'{"version":1}')
    assert sorted(kept.settings_documents()) == [b'{"version":1}', b'{"version":3}']
    assert kept.save_settings("shop|1", 10, b'{"version":10}')
    assert sorted(kept.settings_documents()) == [b'{"version":10}', b'{"version":1}']


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_the_dead_lettered_settings_offset_only_moves_forward(store: RedisStore, kind: str) -> None:
    """The highest settings offset a worker dead-lettered: a restart skips what is at or below it."""
    kept: RedisStore | MemoryStore = store if kind == "redis" else MemoryStore()
    assert kept.dead_lettered("t.settings:0") == -1
    kept.mark_dead_lettered("t.settings:0", 9)
    kept.mark_dead_lettered("t.settings:0", 4)  # a slower worker's older mark never lowers it
    assert kept.dead_lettered("t.settings:0") == 9
    assert kept.dead_lettered("other.settings:0") == -1
    kept.mark_dead_lettered("t.settings:0", 2**53)
    assert kept.dead_lettered("t.settings:0") == 2**53
