"""The seed documents' examples end to end: real broker, real Redis, one worker of each runtime."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from attribution.cli import main
from attribution.errors import BadSettings
from attribution.runtime.kafka_io import check_copartitioned
from tests.conftest import RUNTIMES
from tests.support.kafka import Engine, TopicReader, engine_config
from tests.support.scenarios import DAY_MS, PROJECT, click, goal, send, settings

pytestmark = pytest.mark.integration
T0 = int(time.time() * 1000) - 3600_000
MIN = 60_000


@pytest.fixture(scope="module", params=RUNTIMES)
def engine(request: pytest.FixtureRequest, kafka_bootstrap: str, redis_url: str) -> Iterator[Engine]:
    """One engine per runtime: every test of this module runs on the confluent worker, then on the
    Faust agents."""
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], runtime=request.param)
    eng = Engine(config)
    eng.put_settings(settings())
    worker = eng.worker()
    yield eng
    worker.stop()
    eng.close()


@pytest.fixture(scope="module")
def tallies(engine: Engine) -> TopicReader:
    return engine.reader("tallies")


@pytest.fixture(scope="module")
def conversions(engine: Engine) -> TopicReader:
    return engine.reader("conversions")


def wait_tally(reader: TopicReader, campaign: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    def done(_: list[dict[str, Any]]) -> bool:
        t = reader.latest_tallies().get((PROJECT, campaign))
        return t is not None and ok(t)

    reader.until(done, what=f"tally of {campaign}")
    return reader.latest_tallies()[(PROJECT, campaign)]


def test_five_devices_one_user_counts_once(engine: Engine, tallies: TopicReader) -> None:
    engine.produce([send(f"five-s{i}", "five", f"five-d{i}", T0 + i, user="five-u") for i in range(5)])
    engine.produce([goal("five-g", "signup", "five-d2", T0 + MIN, user="five-u")])
    t = wait_tally(tallies, "five", lambda t: t["events"]["signup"]["send"]["conversions"] == 1)
    assert (t["sends"], t["send_users"], t["events"]["signup"]["rate"]) == (5, 1, 1.0)


def test_two_campaigns_holding_the_goal_are_both_credited(engine: Engine, tallies: TopicReader) -> None:
    engine.produce(
        [
            send("two-s1", "two-a", "two-d", T0, user="two-u"),
            send("two-s2", "two-b", "two-d", T0 + MIN, user="two-u"),
            goal("two-g", "signup", "two-d", T0 + 2 * MIN, user="two-u"),
        ]
    )
    for campaign in ("two-a", "two-b"):
        wait_tally(tallies, campaign, lambda t: t["events"]["signup"]["send"]["conversions"] == 1)


def test_push_purchase_counts_on_click_basis_and_send_basis(engine: Engine, tallies: TopicReader) -> None:
    engine.produce(
        [
            send("cb-s1", "cb", "cb-d1", T0, user="cb-u1"),
            send("cb-s2", "cb", "cb-d2", T0, user="cb-u2"),
            click("cb-k1", "cb", "cb-d1", T0 + 1000, user="cb-u1"),
            goal("cb-g1", "purchase", "cb-d1", T0 + MIN, user="cb-u1", price=100, qty=1),
            goal("cb-g2", "purchase", "cb-d2", T0 + MIN, user="cb-u2", price=100, qty=1),
        ]
    )
    t = wait_tally(tallies, "cb", lambda t: t["events"]["purchase"]["send"]["conversions"] == 2)
    e = t["events"]["purchase"]
    assert (e["primary"], e["click"]["conversions"], e["rate"]) == ("click", 1, 1.0)


def test_kakao_counts_on_send_basis_only(engine: Engine, tallies: TopicReader) -> None:
    engine.produce(
        [
            send("kk-s", "kk", "kk-d", T0, user="kk-u", channel="kakao"),
            click("kk-k", "kk", "kk-d", T0 + 10, user="kk-u", channel="kakao"),
            goal("kk-g", "signup", "kk-d", T0 + 20, user="kk-u"),
        ]
    )
    t = wait_tally(tallies, "kk", lambda t: t["events"]["signup"]["send"]["conversions"] == 1)
    assert (t["events"]["signup"]["primary"], t["events"]["signup"]["click"]["conversions"]) == ("send", 0)


def test_in_app_counts_on_click_basis_only(engine: Engine, tallies: TopicReader) -> None:
    engine.produce(
        [
            send("ia-s", "ia", "ia-d", T0, user="ia-u", channel="in_app"),
            click("ia-k", "ia", "ia-d", T0 + 10, user="ia-u", channel="in_app"),
            goal("ia-g", "signup", "ia-d", T0 + 20, user="ia-u"),
        ]
    )
    t = wait_tally(tallies, "ia", lambda t: t["events"]["signup"]["click"]["conversions"] == 1)
    assert (t["events"]["signup"]["primary"], t["events"]["signup"]["send"]["conversions"]) == ("click", 0)


def test_purchase_amount_is_amount_times_quantity(
    engine: Engine, tallies: TopicReader, conversions: TopicReader
) -> None:
    engine.produce(
        [
            send("pq-s", "pq", "pq-d", T0, user="pq-u"),
            click("pq-k", "pq", "pq-d", T0 + 5, user="pq-u"),
            goal("pq-g", "purchase", "pq-d", T0 + 10, user="pq-u", price="19900", qty=2),
        ]
    )
    t = wait_tally(tallies, "pq", lambda t: t["events"]["purchase"]["click"]["conversions"] == 1)
    assert t["events"]["purchase"]["click"]["revenue"] == {"KRW": "39800"}
    conversions.until(lambda recs: any(c["goal_event_id"] == "pq-g" for c in recs), what="pq conversion")
    conv = next(c for c in conversions.records if c["goal_event_id"] == "pq-g" and c["basis"] == "click")
    assert (conv["amount"], conv["currency"], conv["primary"], conv["message_id"]) == (
        "39800",
        "KRW",
        True,
        "pq-m1",
    )


def test_goal_arriving_before_its_touch_is_credited(engine: Engine, tallies: TopicReader) -> None:
    engine.produce([goal("gb-g", "signup", "gb-d", T0 + MIN, user="gb-u")])
    engine.produce([send("gb-s", "gb", "gb-d", T0, user="gb-u")])
    wait_tally(tallies, "gb", lambda t: t["events"]["signup"]["send"]["conversions"] == 1)


def test_goal_outside_the_window_is_not_credited(engine: Engine, tallies: TopicReader) -> None:
    engine.produce(
        [
            send("ow-s", "ow", "ow-d", T0 - 2 * DAY_MS, user="ow-u"),
            goal("ow-g", "signup", "ow-d", T0 - DAY_MS + 1, user="ow-u"),
            send("ow-s2", "ow", "ow-d2", T0 - 2 * DAY_MS, user="ow-u2"),
        ]
    )
    t = wait_tally(tallies, "ow", lambda t: t["sends"] == 2)
    assert t["events"]["signup"]["send"]["conversions"] == 0


def test_malformed_input_goes_to_the_dlq_and_the_worker_keeps_going(
    engine: Engine, tallies: TopicReader
) -> None:
    dlq = engine.reader("dlq")
    engine.produce_raw("sends", b"dlq-u", b"{not json")
    engine.produce_raw("goals", b"dlq-u", b'{"event_id": "x", "project_id": "shop"}')
    engine.produce_raw("clicks", b"dlq-u", b'{"event_id": 5}')
    engine.produce([send("dlq-s", "dlq", "dlq-d", T0, user="dlq-u")])
    dlq.until(lambda recs: len(recs) >= 3, what="3 dead letters")
    by_topic = {d["topic"].rsplit(".", 1)[1]: d for d in dlq.records}
    assert "not JSON" in by_topic["sends"]["error"] and by_topic["sends"]["raw"] == "{not json"
    assert "name" in by_topic["goals"]["error"] or "device_id" in by_topic["goals"]["error"]
    assert all(isinstance(d["offset"], int) and isinstance(d["partition"], int) for d in dlq.records)
    wait_tally(tallies, "dlq", lambda t: t["sends"] == 1)
    dlq.close()


def test_health_metrics_and_readiness_are_served(engine: Engine, kafka_bootstrap: str) -> None:
    from attribution.devkit.embedded import free_port

    port = free_port()
    worker = engine.worker(metrics_port=port, group_id=f"{engine.config.group_id}-ops")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    ready = orjson.loads(r.read())
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert ready["ok"] is True and "projects" not in ready
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert orjson.loads(r.read())["ok"] is True
        # samples, not only the HELP lines: this member (a group of its own) reads the topics from
        # their start, so it processes batches (one event at least) and reports its lag
        engine.produce([send("ops-s", "ops", "ops-d", T0, user="ops-u")])
        wanted = (
            'attribution_rebalances_total{kind="assign"}',
            'attribution_batch_seconds_count{stage="total"}',
            "attribution_events_total{",
            "attribution_consumer_lag{",
            "attribution_redis_seconds_count{",
        )
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                lines = r.read().decode().splitlines()
            missing = [w for w in wanted if not any(line.startswith(w) for line in lines)]
            if not missing:
                break
            assert time.monotonic() < deadline, f"no samples of {missing}"
            time.sleep(0.5)
        runtime = engine.config.runtime
        assert any(
            line.startswith("attribution_build_info{") and f'runtime="{runtime}"' in line for line in lines
        )
    finally:
        worker.stop()


def test_worker_refuses_input_topics_that_are_not_copartitioned(kafka_bootstrap: str, redis_url: str) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8])
    admin = AdminClient(config.kafka())
    futures = admin.create_topics(
        [
            NewTopic(config.topic("sends"), 3, 1),
            NewTopic(config.topic("clicks"), 2, 1),
            NewTopic(config.topic("goals"), 3, 1),
            NewTopic(config.topic("web_events"), 3, 1),
            NewTopic(config.topic("identity"), 3, 1),
        ]
    )
    for f in futures.values():
        f.result(30)
    with pytest.raises(BadSettings, match="co-partitioned"):
        check_copartitioned(config)


def test_settings_file_with_a_click_basis_for_kakao_is_refused(tmp_path: Any, capsys: Any) -> None:
    doc = {
        "project_id": "p",
        "version": 1,
        "conversion_events": [{"name": "purchase", "window_ms": 1000, "basis": {"kakao": "click"}}],
    }
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(doc))
    assert main(["settings", "validate", str(path)]) == 2
    assert "kakao" in capsys.readouterr().err


def produce_settings_raw(engine: Engine, key: bytes, value: bytes) -> int:
    """A record on the settings topic as a producer that skips `attribution settings put` writes it;
    returns its offset."""
    offsets: list[int] = []
    engine.producer.produce(
        engine.config.topic("settings"),
        key=key,
        value=value,
        on_delivery=lambda err, msg: offsets.append(-1 if err else (msg.offset() or 0)),
    )
    assert engine.producer.flush(30) == 0
    assert offsets and offsets[0] >= 0, offsets
    return offsets[0]


def test_refused_settings_records_are_dead_lettered_once_and_the_worker_keeps_going(
    kafka_bootstrap: str, redis_url: str
) -> None:
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))
    topic = engine.config.topic("settings")
    engine.put_settings(settings())
    kakao_click = orjson.dumps(
        {
            "project_id": PROJECT,
            "version": 2,
            "conversion_events": [{"name": "purchase", "window_ms": 1000, "basis": {"kakao": "click"}}],
        }
    )
    # refused before the worker starts (read at start), then one while it runs
    first = produce_settings_raw(engine, PROJECT.encode(), kakao_click)
    dlq = engine.reader("dlq")
    worker = engine.worker_thread()
    try:
        second = produce_settings_raw(engine, b"other", b"{not json")
        dlq.until(lambda recs: len(recs) >= 2, what="2 dead letters of the settings topic")
        reasons = (
            "invalid settings: conversion_events[0].basis.kakao: kakao can only be measured from the send"
        )
        assert [(d["topic"], d["partition"], d["offset"], d["key"]) for d in dlq.records] == [
            (topic, 0, first, PROJECT),
            (topic, 0, second, "other"),
        ]
        assert dlq.records[0]["error"] == reasons
        assert dlq.records[0]["raw"] == kakao_click.decode()
        assert dlq.records[1]["error"].startswith("not JSON: ")
        metrics = worker.worker.metrics.registry
        assert metrics.get_sample_value("attribution_dlq_total", {"topic": topic}) == 2
        labels = {"topic": topic, "outcome": "dlq"}
        assert metrics.get_sample_value("attribution_events_total", labels) == 2
        # the worker keeps going: a good record after them is taken in, events are applied
        engine.put_settings(settings(version=3, campaign_channels={"set-c": "kakao"}))
        engine.produce([send("set-s", "set-c", "set-d", T0, user="set-u")])
        engine.produce([click("set-k", "set-c", "set-d", T0 + 1, user="set-u")])
        engine.produce([goal("set-g", "purchase", "set-d", T0 + 2, user="set-u", price=5, qty=1)])
        tallies = engine.reader("tallies")
        # v3 declares kakao for the campaign: its rate is on the send although only push was seen
        t = wait_tally(
            tallies,
            "set-c",
            lambda t: (
                t["events"]["purchase"]["click"]["conversions"] == 1
                and t["events"]["purchase"]["primary"] == "send"
            ),
        )
        assert t["channels"] == ["push"]
    finally:
        worker.stop()
    # a restart reads the whole settings topic again: nothing is dead-lettered a second time
    again = engine.worker_thread()
    try:
        engine.produce([send("set-s2", "set-c", "set-d2", T0, user="set-u2")])
        wait_tally(tallies, "set-c", lambda t: t["sends"] == 2)
        dlq.read_to_end()
        assert len(dlq.records) == 2
        assert (
            again.worker.metrics.registry.get_sample_value("attribution_dlq_total", {"topic": topic}) is None
        )
    finally:
        again.stop()
        engine.close()


def test_new_settings_republish_tallies_with_the_new_primary_basis(
    engine: Engine, tallies: TopicReader
) -> None:
    # runs last in this module: it changes the project's settings
    wait_tally(tallies, "cb", lambda t: t["events"]["purchase"]["primary"] == "click")
    before = tallies.latest_tallies()[(PROJECT, "cb")]["version"]
    engine.put_settings(
        settings(
            version=2,
            conversion_events=[
                {
                    "name": "purchase",
                    "window_ms": 3 * DAY_MS,
                    "basis": {"push": "send"},
                    "purchase": {"amount_key": "price", "quantity_key": "qty", "currency": "KRW"},
                },
                {"name": "signup", "window_ms": DAY_MS},
            ],
        )
    )
    t = wait_tally(tallies, "cb", lambda t: t["events"]["purchase"]["primary"] == "send")
    assert t["version"] > before
    assert (t["events"]["purchase"]["send"]["conversions"], t["events"]["purchase"]["rate"]) == (2, 1.0)
