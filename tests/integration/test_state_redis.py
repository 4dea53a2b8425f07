"""RedisStore and its Lua scripts on real servers (valkey 8.1 and Redis 7.0), and the in-memory twin.

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

from attribution.core.model import Event
from attribution.core.money import fmt
from attribution.errors import BadInput, StateConflict
from attribution.state.base import CounterWrite, UserWrite
from attribution.state.keys import Keys
from attribution.state.memory import MemoryStore
from attribution.state.redis_store import RedisStore
from attribution.state.scripts import APPLY, LOAD, TALLY_ACK
from tests.support.harness import Run
from tests.support.scenarios import PROJECT
from tests.unit.test_properties import CAMPAIGNS, GRACE_MS, SETTINGS, deliveries

pytestmark = pytest.mark.integration

TALLY_TTL_MS = 3_600_000
HOUR_MS = 3_600_000

SERVERS = {"valkey": "redis_url", "redis7": "redis_server_url"}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(params=sorted(SERVERS))
def server_url(request: pytest.FixtureRequest) -> str:
    """The URL of each server in turn: valkey 8.1, then Redis 7.0."""
    return cast(str, request.getfixturevalue(SERVERS[request.param]))


@pytest.fixture
def client(server_url: str, unique: str) -> Iterator[redis.Redis]:
    """A client on the server under test; deletes every key of this test afterwards."""
    c = redis.Redis.from_url(server_url)
    try:
        yield c
    finally:
        stale = list(c.scan_iter(match=f"{unique}*", count=1000))
        if stale:
            c.delete(*stale)
        c.close()


@pytest.fixture
def keys(unique: str) -> Keys:
    return Keys(prefix=unique)


@pytest.fixture
def store(client: redis.Redis, keys: Keys) -> RedisStore:
    return RedisStore(client, keys, TALLY_TTL_MS)


# --- helpers -------------------------------------------------------------------------------------


def hgetall(client: redis.Redis, key: str) -> dict[str, str]:
    raw = cast(dict[bytes, bytes], client.hgetall(key))
    return {k.decode(): v.decode() for k, v in raw.items()}


def pttl(client: redis.Redis, key: str) -> int:
    return int(client.pttl(key))


def everything(client: redis.Redis, prefix: str) -> dict[bytes, tuple[bytes, Any, int]]:
    """Every key under ``prefix``: (type, value, has a TTL)."""
    out: dict[bytes, tuple[bytes, Any, int]] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = cast(bytes, client.type(key))
        value: Any
        if kind == b"string":
            value = client.get(key)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = sorted(cast(set[bytes], client.smembers(key)))
        else:  # pragma: no cover - the engine writes no other type
            raise AssertionError(f"unexpected {kind!r} at {key!r}")
        out[key] = (kind, value, int(pttl(client, key) > 0))
    return out


def counter(keys: Keys, campaign: str, **kwargs: Any) -> CounterWrite:
    return CounterWrite(
        key=keys.campaign(PROJECT, campaign),
        member=f"{PROJECT}:{campaign}",
        project_key=keys.project_campaigns(PROJECT),
        **kwargs,
    )


# --- exact decimal addition in apply.lua ---------------------------------------------------------


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
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(amounts=st.lists(deltas(), min_size=1, max_size=12))
def test_apply_adds_decimals_exactly(store: RedisStore, amounts: list[Decimal]) -> None:
    campaign = f"c{next(_examples)}"  # a fresh key per example
    key = store.keys.campaign(PROJECT, campaign)
    one_by_one, together = "r|purchase|send|KRW", "r|purchase|click|USD"
    # field one_by_one: one apply call per delta; field together: every delta in a single call
    for amount in amounts:
        store.apply([], {}, [counter(store.keys, campaign, revenue={one_by_one: amount})], 1)
    store.apply([], {}, [counter(store.keys, campaign, revenue={together: a}) for a in amounts], 1)

    with localcontext() as ctx:
        ctx.prec = 200  # the exact sum: the default 28 digits would round 30-digit amounts
        total = sum(amounts, Decimal(0))
    fields = store.counters([key])[0]
    assert fields[one_by_one] == fmt(total)
    assert fields[together] == fmt(total)
    assert Decimal(fields[one_by_one]) == total
    # one version step per apply, starting from now * 1000 (versions survive an expired hash)
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
        store.apply([], {}, [counter(store.keys, "canon", revenue={"r|e|send|KRW": Decimal(delta)})], 1)
        assert store.counters([key])[0]["r|e|send|KRW"] == want, delta


# --- CAS --------------------------------------------------------------------------------------------


def test_cas_conflict_writes_nothing(store: RedisStore, client: redis.Redis, keys: Keys) -> None:
    a, b, absent = keys.user(PROJECT, "a"), keys.user(PROJECT, "b"), keys.user(PROJECT, "absent")
    clock0, clock1 = keys.clock(0), keys.clock(1)
    store.apply(
        [UserWrite(a, 0, b"a1", HOUR_MS), UserWrite(b, 0, b"b1", HOUR_MS)],
        {clock0: 1000},
        [counter(keys, "x", counts={"sends": 1}, as_of_ts=1000, channel="push")],
        now_ms=5,
    )
    before = everything(client, keys.prefix)
    assert len(before) == 6  # two users, one clock, one campaign, its project set, the dirty set

    stale_writes = [
        # a is current, b is stale (v1 in Redis)
        [UserWrite(a, 1, b"a2", HOUR_MS), UserWrite(b, 0, b"b2", HOUR_MS)],
        # a user that does not exist is at version 0
        [UserWrite(a, 1, b"a2", HOUR_MS), UserWrite(absent, 3, b"n", HOUR_MS)],
        [UserWrite(a, 2, b"a2", HOUR_MS)],
    ]
    for users in stale_writes:
        with pytest.raises(StateConflict) as info:
            store.apply(
                users,
                {clock0: 9000, clock1: 7000},
                [
                    counter(keys, "y", counts={"sends": 1}, revenue={"r|e|send|KRW": Decimal(1)}),
                    counter(keys, "x", counts={"sends": 5}, as_of_ts=9000, channel="sms"),
                ],
                now_ms=9,
            )
        assert users[-1].key in str(info.value)
        assert everything(client, keys.prefix) == before

    loaded = store.load([a, b, absent], [clock0, clock1])
    assert loaded.users == {a: (1, b"a1"), b: (1, b"b1"), absent: (0, None)}
    assert loaded.clocks == {clock0: 1000, clock1: None}
    assert store.dirty(10) == [f"{PROJECT}:x"]
    assert store.counters([keys.campaign(PROJECT, "y")]) == [{}]


def test_user_versions_increment_and_blobs_replace(
    store: RedisStore, client: redis.Redis, keys: Keys
) -> None:
    a = keys.user(PROJECT, "a")
    assert store.load([a], []).users == {a: (0, None)}
    store.apply([UserWrite(a, 0, b"one", HOUR_MS)], {}, [], 1)
    assert store.load([a], []).users == {a: (1, b"one")}
    store.apply([UserWrite(a, 1, b"two", 2 * HOUR_MS)], {}, [], 1)
    assert store.load([a], []).users == {a: (2, b"two")}
    assert HOUR_MS < pttl(client, a) <= 2 * HOUR_MS
    # a TTL that already ran out in event time still gets a positive PEXPIRE (max 1 ms), not a 0/negative one
    b = keys.user(PROJECT, "b")
    store.apply([UserWrite(b, 0, b"x", -5)], {}, [], 1)
    assert pttl(client, b) in (-2, 0, 1)


# --- clocks, counters, dirty set, TTLs -------------------------------------------------------------


def test_clocks_only_move_forward(store: RedisStore, keys: Keys) -> None:
    c0, c1 = keys.clock(0), keys.clock(1)
    assert store.load([], [c0, c1]).clocks == {c0: None, c1: None}
    for ts, want in [(5000, 5000), (3000, 5000), (5000, 5000), (9000, 9000), (0, 9000)]:
        store.apply([], {c0: ts, c1: ts + 1}, [], 1)
        assert store.load([], [c0, c1]).clocks == {c0: want, c1: want + 1}
    big = 2**53  # the largest event ts the model accepts still compares exactly
    store.apply([], {c0: big - 1}, [], 1)
    store.apply([], {c0: big - 2}, [], 1)
    assert store.load([], [c0]).clocks == {c0: big - 1}


def test_counters_add_and_campaign_fields(store: RedisStore, client: redis.Redis, keys: Keys) -> None:
    key = keys.campaign(PROJECT, "x")
    store.apply(
        [],
        {},
        [counter(keys, "x", counts={"sends": 2, "c|purchase|send": 1}, as_of_ts=100, channel="push")],
        7,
    )
    store.apply(
        [], {}, [counter(keys, "x", counts={"sends": 3, "failed": 1}, as_of_ts=50, channel="kakao")], 8
    )
    store.apply([], {}, [counter(keys, "x", counts={"c|purchase|send": -1}, as_of_ts=200)], 9)
    store.apply([], {}, [counter(keys, "x")], 10)  # touched only: no counters, as_of 0
    assert hgetall(client, key) == {
        "sends": "5",
        "failed": "1",
        "c|purchase|send": "0",
        "as_of": "200",
        "channel": "push",
        "version": "10000",  # max(previous + 1, now * 1000) at the last apply (now = 10)
    }
    # the dirty member keeps the wall time it was first marked at
    assert store.dirty(10) == [f"{PROJECT}:x"]
    assert client.zscore(keys.dirty, f"{PROJECT}:x") == 7.0
    assert 0 < pttl(client, key) <= TALLY_TTL_MS


def test_dirty_members_are_ordered_by_first_mark(store: RedisStore, keys: Keys) -> None:
    store.apply([], {}, [counter(keys, "b")], 20)
    store.apply([], {}, [counter(keys, "a"), counter(keys, "c")], 30)
    store.apply([], {}, [counter(keys, "b")], 40)
    assert store.dirty(10) == [f"{PROJECT}:b", f"{PROJECT}:a", f"{PROJECT}:c"]
    assert store.dirty(1) == [f"{PROJECT}:b"]


def test_ttls_are_set_on_user_and_campaign_keys(store: RedisStore, client: redis.Redis, keys: Keys) -> None:
    user, campaign = keys.user(PROJECT, "u"), keys.campaign(PROJECT, "x")
    store.apply([UserWrite(user, 0, b"s", 10 * HOUR_MS)], {keys.clock(0): 1}, [counter(keys, "x")], 1)
    assert 9 * HOUR_MS < pttl(client, user) <= 10 * HOUR_MS
    assert TALLY_TTL_MS - 60_000 < pttl(client, campaign) <= TALLY_TTL_MS
    client.persist(campaign)
    store.apply([], {}, [counter(keys, "x")], 2)  # every apply refreshes the campaign TTL
    assert pttl(client, campaign) > 0


# --- ack -------------------------------------------------------------------------------------------


def test_ack_removes_only_campaigns_not_changed_since_published(store: RedisStore, keys: Keys) -> None:
    x, y = keys.campaign(PROJECT, "x"), keys.campaign(PROJECT, "y")
    mx, my = f"{PROJECT}:x", f"{PROJECT}:y"
    store.apply([], {}, [counter(keys, "x", counts={"sends": 1}), counter(keys, "y")], 1)
    store.apply([], {}, [counter(keys, "x", counts={"sends": 1})], 2)
    vx, vy = (int(h["version"]) for h in store.counters([x, y]))
    assert vx > vy
    assert store.ack([]) == 0
    assert store.ack([(x, mx, vx - 1)]) == 0  # x changed after the published snapshot: stays dirty
    assert store.dirty(10) == [mx, my]
    assert store.ack([(x, mx, vx), (y, my, vy - 1)]) == 1  # x acknowledged; y is newer than published
    assert store.dirty(10) == [my]
    assert store.ack([(y, my, vy + 5)]) == 1  # a newer published version than stored also acknowledges
    assert store.ack([(y, my, vy + 5)]) == 0  # already gone
    assert store.dirty(10) == []
    gone = keys.campaign(PROJECT, "gone")  # an expired campaign is version 0
    store.apply([], {}, [counter(keys, "gone")], 3)
    store.client.delete(gone)
    assert store.ack([(gone, f"{PROJECT}:gone", 0)]) == 1


def test_a_stale_ack_marks_the_campaign_again_after_another_publisher_removed_it(
    store: RedisStore, keys: Keys
) -> None:
    # publisher A read version v1; a batch made v2; publisher B published v2 and acknowledged it.
    # A's stale v1 reaches the broker after B's v2, so A's ack must ask for v2 to be published again.
    x, mx = keys.campaign(PROJECT, "x"), f"{PROJECT}:x"
    store.apply([], {}, [counter(keys, "x", counts={"sends": 1})], 1)
    v1 = int(store.counters([x])[0]["version"])
    store.apply([], {}, [counter(keys, "x", counts={"sends": 1})], 2)
    v2 = int(store.counters([x])[0]["version"])
    assert store.ack([(x, mx, v2)], now_ms=3) == 1  # B
    assert store.dirty(10) == []
    assert store.ack([(x, mx, v1)], now_ms=4) == 0  # A, stale
    assert store.dirty(10) == [mx]


def test_versions_never_go_back_when_the_counter_hash_expires(store: RedisStore, keys: Keys) -> None:
    x = keys.campaign(PROJECT, "x")
    store.apply([], {}, [counter(keys, "x", counts={"sends": 1})], 1_700_000_000_000)
    before = int(store.counters([x])[0]["version"])
    store.client.delete(x)  # the TTL ran out
    store.apply([], {}, [counter(keys, "x", counts={"sends": 1})], 1_700_000_000_001)
    assert int(store.counters([x])[0]["version"]) > before


# --- NOSCRIPT ----------------------------------------------------------------------------------------


def test_scripts_are_reloaded_after_script_flush(store: RedisStore, client: redis.Redis, keys: Keys) -> None:
    user, clock = keys.user(PROJECT, "u"), keys.clock(0)
    store.apply([UserWrite(user, 0, b"s", HOUR_MS)], {clock: 5}, [counter(keys, "x")], 1)
    shas = [APPLY.sha, LOAD.sha, TALLY_ACK.sha]
    for call in ("load", "apply", "ack"):
        client.script_flush()
        assert client.script_exists(*shas) == [False, False, False]
        if call == "load":
            assert store.load([user], [clock]).users == {user: (1, b"s")}
        elif call == "apply":
            store.apply([UserWrite(user, 1, b"t", HOUR_MS)], {clock: 6}, [counter(keys, "x")], 2)
            assert store.load([user], [clock]).clocks == {clock: 6}
        else:
            version = int(store.counters([keys.campaign(PROJECT, "x")])[0]["version"])
            assert store.ack([(keys.campaign(PROJECT, "x"), f"{PROJECT}:x", version)]) == 1
        script = {"load": LOAD, "apply": APPLY, "ack": TALLY_ACK}[call]
        assert client.script_exists(script.sha) == [True]


# --- the in-memory twin ----------------------------------------------------------------------------


def _run(store: Any, keys: Keys, batches: list[list[Event]], replay: int | None) -> Run:
    return Run([SETTINGS], store=store, keys=keys, grace_ms=GRACE_MS).deliver(batches, replay)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=deliveries())
def test_memory_store_agrees_with_redis(
    client: redis.Redis, unique: str, case: tuple[list[Event], list[list[Event]], int | None]
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
    # the raw state agrees too: counter hashes, dirty set, user states, clocks
    campaign_keys = [keys.campaign(PROJECT, c) for c in CAMPAIGNS]
    assert in_redis.store.counters(campaign_keys) == memory.counters(campaign_keys)
    assert in_redis.store.dirty(100) == memory.dirty(100)
    user_keys = [keys.user(PROJECT, u) for u in ("u0", "u1", "u2", "d3a", "d3b")]
    clock_keys = [keys.clock(p) for p in range(2)]
    assert in_redis.store.load(user_keys, clock_keys) == memory.load(user_keys, clock_keys)


def test_touch_project_republishes_every_campaign_of_the_project_with_a_new_version(
    store: RedisStore, keys: Keys
) -> None:
    x, y = keys.campaign(PROJECT, "x"), keys.campaign(PROJECT, "y")
    mx, my = Keys.member(PROJECT, "x"), Keys.member(PROJECT, "y")
    writes = [
        CounterWrite(key=k, member=m, project_key=keys.project_campaigns(PROJECT), counts={"sends": 1})
        for k, m in ((x, mx), (y, my))
    ]
    store.apply([], {}, writes, 1)
    versions = [int(h["version"]) for h in store.counters([x, y])]
    store.ack([(x, mx, versions[0]), (y, my, versions[1])])
    assert store.dirty(10) == []
    assert store.touch_project(keys.project_campaigns(PROJECT), 5) == 2
    assert sorted(store.dirty(10)) == sorted([mx, my])
    assert all(int(h["version"]) > v for h, v in zip(store.counters([x, y]), versions, strict=True))
    assert store.touch_project(keys.project_campaigns("another"), 6) == 0


def test_an_error_raised_by_the_script_is_bad_input_not_a_redis_failure(
    store: RedisStore, keys: Keys
) -> None:
    with pytest.raises(BadInput, match="bad decimal"):
        store.apply([], {}, [counter(keys, "x", revenue={"r|e|send|KRW": Decimal("NaN")})], 1)
    assert store.counters([keys.campaign(PROJECT, "x")]) == [{}]  # nothing written
