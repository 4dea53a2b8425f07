"""What only the Faust runtime needs: mounting into an app of one's own, the setting it refuses, lost
state in a child process. The shared tests (seed examples, DLQ, health, KARTE, restarts, kill -9, a
Redis outage, rebalances and the soak) run on both runtimes through the ``runtime`` fixture."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from attribution.state.router import close, connect
from tests.integration.test_recovery import HOUR, SHORT_WINDOWS, scenario
from tests.support.kafka import Engine, TopicReader, engine_config, env_of
from tests.support.outcome import assert_exact, consumed_everything, settled

pytestmark = pytest.mark.integration


def faust_engine(kafka: str, redis_url: str, **overrides: object) -> Engine:
    return Engine(engine_config(kafka, redis_url, uuid.uuid4().hex[:8], runtime="faust", **overrides))


def test_the_agents_mounted_into_an_app_with_its_own_agent(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    engine = faust_engine(kafka_bootstrap, redis_url)
    echo_in, echo_out = f"{engine.config.topic_prefix}echo-in", f"{engine.config.topic_prefix}echo-out"
    admin = AdminClient(engine.config.kafka())
    for future in admin.create_topics([NewTopic(echo_in, 1, 1), NewTopic(echo_out, 1, 1)]).values():
        future.result(30)
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 5 * 60_000, 1000, 6, seed=9)
    engine.produce(events)
    for i in range(20):
        engine.producer.produce(echo_in, value=b'{"n": %d, "text": "hello"}' % i)
    engine.producer.flush(30)
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    shouted = TopicReader(engine.config, echo_out)
    with open(engine.new_log(), "wb") as log:
        app = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faust_mounted", "worker", "--loglevel", "warn"],
            env={
                **env_of(engine.config),
                "ECHO_IN": echo_in,
                "ECHO_OUT": echo_out,
                "FAUST_DATADIR": str(tmp_path / "faust-data"),
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        try:
            shouted.until(lambda recs: len(recs) >= 20, what="the app's own agent")
            settled(engine, redis_url, tallies, convs)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{engine.log_tail()}") from None
    finally:
        app.send_signal(signal.SIGTERM)
        code = app.wait(60)
        shouted.close()
        engine.close()
    assert code == 0, engine.log_tail()
    assert sorted(r["N"] for r in shouted.records) == list(range(20))
    assert all(r["TEXT"] == "HELLO" for r in shouted.records)
    assert_exact(events, SHORT_WINDOWS, tallies, convs)


def test_exactly_once_is_refused_naming_the_setting(kafka_bootstrap: str, redis_url: str) -> None:
    config = engine_config(
        kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], runtime="faust", exactly_once=True
    )
    done = subprocess.run(
        [sys.executable, "-m", "attribution.cli", "worker"],
        env=env_of(config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "ATTRIBUTION_EXACTLY_ONCE" in done.stderr and "confluent runtime" in done.stderr


def test_lost_state_stops_the_faust_worker_naming_the_way_out(kafka_bootstrap: str, redis_url: str) -> None:
    data_dirs = set(Path.cwd().glob("*-data"))  # Faust's default data directory: <app id>-data
    engine = faust_engine(kafka_bootstrap, redis_url, state_check_ms=200)
    engine.put_settings(SHORT_WINDOWS)
    engine.produce(scenario(int(time.time() * 1000) - 2 * HOUR, 3 * 60_000, 1000, 6, seed=4))
    worker = engine.worker_process()
    try:
        consumed_everything(engine)
        client = connect(redis_url)
        try:  # Redis restarts without persistence while the worker runs: it stops, never counts wrong
            for key in list(client.scan_iter(match=f"{engine.config.redis_prefix}:*", count=1000)):
                client.unlink(key)
        finally:
            close(client)
        assert worker.wait(30) == 1, engine.log_tail()
        assert "attribution rebuild" in engine.log_tail()
        # a restarted worker refuses to start
        again = engine.worker_process()
        assert again.wait(60) == 1
        assert "committed offsets" in engine.log_tail()
    finally:
        if worker.poll() is None:
            worker.kill()
        engine.close()
    assert set(Path.cwd().glob("*-data")) == data_dirs, "the worker left a Faust data directory behind"
