"""Crash and catch-up: outputs stay exact when a worker is killed, and when hours of backlog are
processed in one burst."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from attribution.core.model import Click, Event, Goal, Send
from attribution.core.rules import ProjectSettings, parse_settings
from attribution.devkit.traffic import DEMO_PROJECT, Traffic
from tests.support.kafka import Engine, engine_config
from tests.support.outcome import assert_exact, consumed_everything, settled
from tests.support.reference import normalise_tally

pytestmark = pytest.mark.integration
HOUR = 3600 * 1000
TYPES: dict[str, type[Send] | type[Click] | type[Goal]] = {"sends": Send, "clicks": Click, "goals": Goal}

SHORT_WINDOWS: ProjectSettings = parse_settings(
    {
        "project_id": DEMO_PROJECT,
        "version": 1,
        "conversion_events": [
            {
                "name": "purchase",
                "window_ms": 30 * 60_000,
                "basis": {"push": "click"},
                "purchase": {"amount_key": "price", "quantity_key": "quantity", "currency": "KRW"},
            },
            {"name": "signup", "window_ms": 10 * 60_000},
            {"name": "push_apps_subscribe", "window_ms": 5 * 60_000, "basis": {"web_push": "send"}},
        ],
    }
)


def scenario(start_ms: int, span_ms: int, step_ms: int, per_step: int, seed: int) -> list[Event]:
    """Event-time ordered demo traffic from start_ms over span_ms, with goals up to 2 h late."""
    traffic = Traffic(seed=seed, users=400, late_goal_ratio=0.3)
    out: list[Event] = []
    for now in range(start_ms, start_ms + span_ms, step_ms):
        out += [msgspec.convert(v, TYPES[k]) for k, _, v in traffic.events(now, per_step)]
    return out


@pytest.fixture
def fresh_engine(kafka_bootstrap: str, redis_and_runtime: tuple[str, str, str]) -> Iterator[Engine]:
    """An engine of its own on a single Redis and on a Redis Cluster, and on the Faust runtime."""
    _, url, runtime = redis_and_runtime
    engine = Engine(
        engine_config(kafka_bootstrap, url, uuid.uuid4().hex[:8], batch_size=300, runtime=runtime)
    )
    yield engine
    engine.close()


def test_worker_killed_mid_stream_restarts_without_double_count(fresh_engine: Engine) -> None:
    engine = fresh_engine
    redis_url = engine.config.redis_url.get_secret_value()
    engine.put_settings(SHORT_WINDOWS)
    start = int(time.time() * 1000) - 2 * HOUR
    events = scenario(start, 20 * 60_000, 1000, 12, seed=11)
    # a third of the input before each worker: a worker that takes the whole input in one cycle
    # (the Faust runtime takes all it was delivered) would leave its successor nothing to do
    third = len(events) // 3
    chunks = [events[:third], events[third : 2 * third], events[2 * third :]]
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    kills = 0
    for chunk in chunks[:2]:  # kill -9 twice, each time after the worker made some progress
        engine.produce(chunk)
        proc = engine.worker_process()
        target = len(convs.records) + 5
        convs.until(lambda recs: len(recs) > target, timeout_s=60, what="progress")  # noqa: B023
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    engine.produce(chunks[2])
    final = engine.worker_process()
    try:
        settled(engine, redis_url, tallies, convs)
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0, engine.log_tail()
    repeats = assert_exact(events, SHORT_WINDOWS, tallies, convs)
    print(f"{len(events)} events, {kills} kills, {repeats} repeated conversion records")  # noqa: T201


def test_hours_old_backlog_in_one_burst_equals_live(
    kafka_bootstrap: str, redis_url: str, runtime: str
) -> None:
    start = int(time.time() * 1000) - 8 * HOUR
    events = scenario(start, 6 * HOUR, 10_000, 4, seed=5)
    results: dict[str, dict[Any, Any]] = {}
    for mode in ("live", "burst"):
        config = engine_config(
            kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], batch_size=2000, runtime=runtime
        )
        engine = Engine(config)
        engine.put_settings(SHORT_WINDOWS)
        tallies, convs = engine.reader("tallies"), engine.reader("conversions")
        if mode == "burst":
            engine.produce(events)
            worker = engine.worker()
        else:
            worker = engine.worker()
            for i in range(0, len(events), 500):  # arrives over time while the worker runs
                engine.produce(events[i : i + 500])
        try:
            settled(engine, redis_url, tallies, convs)
        finally:
            worker.stop()
            engine.close()
        assert_exact(events, SHORT_WINDOWS, tallies, convs)
        results[mode] = {k: normalise_tally(v) for k, v in tallies.latest_tallies().items()}
    assert results["live"] == results["burst"]


def test_an_input_ending_in_a_transaction_marker_does_not_stall_a_restart(
    kafka_bootstrap: str, redis_url: str, runtime: str
) -> None:
    """Goals written by a transactional producer end in a commit marker, which consumers never see.
    A restarted worker starts at that marker: it must still find the goals partitions at their end,
    or their partners (the sends produced meanwhile) would wait for them for good."""
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], runtime=runtime))
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 5 * 60_000, 1000, 6, seed=13)
    half = len(events) // 2
    goals = [e for e in events[:half] if isinstance(e, Goal)]
    engine.produce([e for e in events[:half] if not isinstance(e, Goal)])
    txn = Producer(engine.config.kafka({"transactional.id": f"upstream-{engine.config.group_id}"}))
    txn.init_transactions(30)
    txn.begin_transaction()
    for g in goals:
        txn.produce(engine.config.topic("goals"), key=g.user_key.encode(), value=msgspec.json.encode(g))
    txn.commit_transaction(30)
    later: list[Event] = [e for e in events[half:] if not isinstance(e, Goal)]  # goals keep their marker
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    first = engine.worker()
    try:
        consumed_everything(engine, markers=("goals",))
    finally:
        first.stop()
    engine.produce(later)
    again = engine.worker()
    try:
        consumed_everything(engine, timeout_s=60, markers=("goals",))
        settled(engine, redis_url, tallies, convs, markers=("goals",))
    finally:
        again.stop()
        engine.close()
    assert_exact(events[:half] + later, SHORT_WINDOWS, tallies, convs)
