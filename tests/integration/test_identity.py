"""Identities end to end: a real broker, real Redis, the internal ``identity`` topic between workers.

A device D and its user U are keyed to different partitions: D's anonymous events are on P(D), the
login and the purchase on P(U); the link goes P(U) -> P(D) and the routes P(D) -> P(U) through the
``identity`` topic. The outputs (latest record per conversion id, a retracted one included; the
latest tally per campaign) must equal the independent reference over the resolved events
(``tests.support.identity_ref``), also when a worker is killed with SIGKILL and restarted.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from attribution.core.model import Event
from attribution.core.outputs import conversion_id
from attribution.core.rules import ProjectSettings, parse_settings
from tests.support.harness import partition_of
from tests.support.identity_ref import expected
from tests.support.kafka import Engine, TopicReader, engine_config
from tests.support.outcome import settled
from tests.support.reference import normalise_conversion, normalise_tally
from tests.support.scenarios import PROJECT, click, goal, send, settings, web

pytestmark = pytest.mark.integration
MIN = 60_000
PARTITIONS = 3  # engine_config's; the producer's default partitioner is CRC32(key) % partitions


def apart(prefix: str) -> tuple[str, str]:
    """A (device, user) pair whose keys go to different partitions."""
    for i in range(100):
        device, user = f"{prefix}-d{i}", f"{prefix}-u{i}"
        if partition_of(device, PARTITIONS) != partition_of(user, PARTITIONS):
            return device, user
    raise AssertionError("no pair of keys on different partitions")


def compare(
    events: list[Event], cfg: ProjectSettings, tallies: TopicReader, convs: TopicReader
) -> dict[str, dict[str, Any]]:
    """The topics read to their end against the reference over the resolved events; returns the
    latest record per conversion id (retracted ones included)."""
    want_tallies, want_convs = expected(events, cfg)
    got = tallies.latest_tallies()
    assert set(got) == set(want_tallies)
    for key, want in want_tallies.items():
        have = normalise_tally(got[key])
        assert have == want, (key, have, want)
    latest = {c["conversion_id"]: c for c in convs.records}  # in order per key: per conversion id
    live = {cid: normalise_conversion(c) for cid, c in latest.items() if not c.get("retracted")}
    wanted = {cid: normalise_conversion(c) for cid, c in want_convs.items()}
    extra, missing = sorted(live.keys() - wanted.keys()), sorted(wanted.keys() - live.keys())
    assert not extra and not missing, (
        f"{len(extra)} conversion ids live on the topic but not in the reference (their retraction "
        f"never published?): {[(live[k]['user_key'], live[k]['campaign_id']) for k in extra[:5]]}; "
        f"{len(missing)} missing: {missing[:5]}"
    )
    assert live == wanted
    return latest


def partitions_of(engine: Engine, kind: str, keys: set[str], timeout_s: float = 30.0) -> dict[str, int]:
    """The partition each of ``keys`` was written to in input topic ``kind``."""
    topic = engine.config.topic(kind)
    consumer = Consumer(engine.config.kafka({"group.id": f"probe-{uuid.uuid4().hex[:8]}"}))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        found: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        while found.keys() != keys:
            assert time.monotonic() < deadline, f"keys not found in {kind}: {keys - found.keys()}"
            for msg in consumer.consume(1000, 0.5):
                key = (msg.key() or b"").decode()
                if msg.error() is None and key in keys:
                    found[key] = msg.partition() or 0
        return found
    finally:
        consumer.close()


@pytest.fixture
def engine(kafka_bootstrap: str, redis_url: str) -> Iterator[Engine]:
    eng = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], batch_size=200))
    assert eng.config.partitions == PARTITIONS
    yield eng
    eng.close()


def test_a_device_login_and_a_late_link_across_partitions(engine: Engine) -> None:
    cfg = settings()
    engine.put_settings(cfg)
    redis_url = engine.config.redis_url.get_secret_value()
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    t0 = int(time.time() * 1000) - 3600_000
    da, ua = apart("ida")  # anonymous sends, then a login and a purchase as the user
    db, ub = apart("idb")  # a purchase converts for the device, then a late link moves it
    vc, uc = apart("idc")  # a web visitor: message_open, subscribe, then identify as the user
    first: list[Event] = [
        send("ia-s1", "id-a", da, t0),
        click("ia-k1", "id-a", da, t0 + 1000),
        goal("ia-in", "login", da, t0 + MIN, user=ua),
        goal("ia-buy", "purchase", da, t0 + 2 * MIN, user=ua, price=100, qty=1),
        send("ib-s1", "id-b", db, t0),
        goal("ib-g1", "purchase", db, t0 + MIN, price=50, qty=2),
        web("ic-o", "message_open", vc, t0, campaign="id-c", message="m1"),
        web("ic-sub", "push_apps_subscribe", vc, t0 + 1000),
        web("ic-in", "plugin_push_apps_identify", vc, t0 + MIN, user=uc, subscribed=False),
        web("ic-buy", "purchase", vc, t0 + 2 * MIN, user=uc, price=7, qty=1),
    ]
    d_cid = conversion_id(PROJECT, "id-b", "purchase", "send", db)
    u_cid = conversion_id(PROJECT, "id-b", "purchase", "send", ub)
    worker = engine.worker_thread()
    try:
        engine.produce(first)
        # D's anonymous events and U's login really are on different partitions
        sends = partitions_of(engine, "sends", {da, db})
        assert sends[da] != partitions_of(engine, "goals", {ua})[ua]
        convs.until(
            lambda recs: any(c["conversion_id"] == d_cid for c in recs), what="the device's conversion"
        )
        late: list[Event] = [goal("ib-in", "login", db, t0 + 2 * MIN, user=ub)]
        engine.produce(late)
        assert sends[db] != partitions_of(engine, "goals", {ub})[ub]
        convs.until(lambda recs: any(c["conversion_id"] == u_cid for c in recs), what="the user's conversion")
        settled(engine, redis_url, tallies, convs)
    finally:
        worker.stop()
    latest = compare(first + late, cfg, tallies, convs)
    # the device's conversion was published, then retracted: its latest record says so
    assert latest[d_cid]["retracted"] is True
    assert (latest[d_cid]["user_key"], latest[d_cid]["goal_event_id"]) == (db, "ib-g1")
    assert (latest[u_cid]["user_key"], latest[u_cid]["touch_event_id"], latest[u_cid]["amount"]) == (
        ub,
        "ib-s1",
        "100",
    )
    a = latest[conversion_id(PROJECT, "id-a", "purchase", "click", ua)]
    assert (a["user_key"], a["touch_event_id"], a["goal_event_id"]) == (ua, "ia-k1", "ia-buy")
    c = latest[conversion_id(PROJECT, "id-c", "purchase", "send", uc)]
    assert (c["user_key"], c["touch_event_id"], c["goal_event_id"]) == (uc, "ic-o", "ic-buy")
    t = tallies.latest_tallies()
    assert (t[(PROJECT, "id-a")]["send_users"], t[(PROJECT, "id-a")]["click_users"]) == (1, 1)
    assert t[(PROJECT, "id-b")]["events"]["purchase"]["send"] == {"conversions": 1, "revenue": {"KRW": "100"}}


# --- kill -9 ---------------------------------------------------------------------------------------------

KILL_SETTINGS: ProjectSettings = parse_settings(
    {
        "project_id": PROJECT,
        "version": 1,
        "conversion_events": [
            {
                "name": "purchase",
                "window_ms": 30 * MIN,
                "basis": {"push": "click"},
                "purchase": {"amount_key": "price", "quantity_key": "qty", "currency": "KRW"},
            },
            {"name": "signup", "window_ms": 10 * MIN},
        ],
    }
)


def shared_devices(start: int, seed: int, devices: int = 400, users: int = 200) -> list[Event]:
    """20 minutes of traffic (less than the 30-minute identity window, so no link comes too late
    for what it decides, however far a catch-up batch runs ahead): devices anonymous at first, a
    login, sometimes a second user later; anonymous and logged-in sends, clicks and goals."""
    rnd = random.Random(seed)
    span = 20 * MIN
    events: list[Event] = []
    n = 0

    def eid(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{kind}{n}"

    def who(logins: list[int], owners: list[str], ts: int) -> str | None:
        if not logins or rnd.random() < 0.6:
            return None  # anonymous
        known = [u for t, u in zip(logins, owners, strict=True) if t <= ts]
        return known[-1] if known else None

    for i in range(devices):
        device = f"kd{i}"
        logins = sorted(rnd.sample(range(span), rnd.choice([0, 1, 1, 2])))
        owners = [f"ku{rnd.randrange(users)}" for _ in logins]
        for ts, user in zip(logins, owners, strict=True):
            events.append(goal(eid("l"), "login", device, start + ts, user=user))

        for _ in range(rnd.randint(2, 8)):
            ts = rnd.randrange(span)
            campaign = f"kc{rnd.randrange(4)}"
            what = rnd.random()
            if what < 0.45:
                events.append(
                    send(
                        eid("s"),
                        campaign,
                        device,
                        start + ts,
                        who(logins, owners, ts),
                        message=f"{campaign}-m",
                    )
                )
            elif what < 0.7:
                events.append(
                    click(
                        eid("k"),
                        campaign,
                        device,
                        start + ts,
                        who(logins, owners, ts),
                        message=f"{campaign}-m",
                    )
                )
            else:
                name = rnd.choice(["purchase", "purchase", "signup"])
                price = rnd.choice([100, 250, "9.5"])
                events.append(
                    goal(eid("g"), name, device, start + ts, who(logins, owners, ts), price=price, qty=1)
                )
    events.sort(key=lambda e: (e.ts, e.event_id))
    return events


def test_a_worker_killed_mid_stream_with_links_in_flight_restarts_exact(
    kafka_bootstrap: str, redis_url: str, runtime: str
) -> None:
    # small batches: many batches (and identity hops) to be killed in the middle of
    engine = Engine(
        engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], batch_size=40, runtime=runtime)
    )
    engine.put_settings(KILL_SETTINGS)
    start = int(time.time() * 1000) - 2 * 3600_000
    events = shared_devices(start, seed=12)
    engine.produce(events)
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    killed_at = []
    for _ in range(2):  # kill -9 twice, each time after the worker made some progress
        proc = engine.worker_process()
        target = len(convs.records) + 15
        deadline = time.monotonic() + 60
        while len(convs.records) <= target and time.monotonic() < deadline:
            convs.poll()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at.append(len(convs.records))
    final = engine.worker_process()
    try:
        settled(engine, redis_url, tallies, convs)
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0, engine.log_tail()
        engine.close()
    assert killed_at[0] < len(convs.records), "the first kill came after the end: nothing was tested"
    latest = compare(events, KILL_SETTINGS, tallies, convs)
    retracted = [c for c in latest.values() if c.get("retracted")]
    moved = {c["user_key"] for c in latest.values() if not c.get("retracted")}
    print(  # noqa: T201
        f"{len(events)} events, killed after {killed_at} conversion records, "
        f"{len(convs.records)} conversion records, {len(latest)} ids, "
        f"{len(retracted)} retracted, {sum(u.startswith('ku') for u in moved)} users converted"
    )
