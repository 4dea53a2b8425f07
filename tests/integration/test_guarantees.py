"""The operational guarantees of README "Guarantees": broker outage, lost Redis state and rebuild,
exactly-once mode. Real broker and Redis processes; no mocks."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from attribution.devkit import embedded
from attribution.engine.processor import Processor
from attribution.errors import AttributionError, LostState
from attribution.runtime.rebuild import rebuild
from attribution.state.keys import Keys
from attribution.state.router import close, connect
from tests.integration.test_recovery import HOUR, SHORT_WINDOWS, scenario
from tests.support.kafka import Engine, engine_config
from tests.support.outcome import assert_exact, consumed_everything, settled
from tests.support.proxy import Proxy

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxied_kafka() -> Iterator[tuple[str, Proxy]]:
    """A broker of its own that clients reach through a proxy that can cut them off."""
    port = _free_port()
    proxy = Proxy(("127.0.0.1", port))
    with embedded.start_kafka(port=port, advertised_port=proxy.port):
        yield f"127.0.0.1:{proxy.port}", proxy
    proxy.cut()


def test_worker_survives_a_broker_outage(proxied_kafka: tuple[str, Proxy], redis_url: str) -> None:
    bootstrap, proxy = proxied_kafka
    engine = Engine(engine_config(bootstrap, redis_url, uuid.uuid4().hex[:8]))
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 10 * 60_000, 1000, 6, seed=3)
    half = len(events) // 2
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    worker = engine.worker_process()
    try:
        engine.produce(events[:half])
        convs.until(lambda recs: len(recs) > 10, timeout_s=60, what="first conversions")
        proxy.cut()  # the broker is gone for longer than the session timeout (6 s)
        time.sleep(10)
        assert worker.poll() is None, "the worker died while the broker was away"
        proxy.restore()
        engine.produce(events[half:])
        settled(engine, redis_url, tallies, convs)
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        engine.close()
    assert code == 0
    assert_exact(events, SHORT_WINDOWS, tallies, convs)


def test_lost_state_is_refused_and_rebuild_replays_it_exactly(kafka_bootstrap: str, redis_url: str) -> None:
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], state_check_ms=200)
    engine = Engine(config)
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 10 * 60_000, 1000, 6, seed=4)
    half = len(events) // 2
    engine.produce(events[:half])
    worker = engine.worker_thread()
    consumed_everything(engine)
    # Redis restarts without persistence while the worker runs: it stops instead of counting wrong
    client = connect(redis_url)
    try:
        for key in list(client.scan_iter(match=f"{config.redis_prefix}:*", count=1000)):
            client.unlink(key)
        worker.thread.join(10)
        assert not worker.thread.is_alive(), "the worker kept running on lost state"
        assert isinstance(worker.error, LostState) and "attribution rebuild" in str(worker.error)
        # ... and a restarted worker refuses to start, naming the way out
        again = engine.worker_thread()
        again.thread.join(30)
        assert isinstance(again.error, LostState) and "committed offsets" in str(again.error)
        # rebuild: replays the retained inputs into a new generation, leaves offsets at the end
        summary = rebuild(config, "earliest")
        assert summary["from"] == "earliest" and int(str(summary["batches"])) > 0
        assert client.exists(Keys(config.redis_prefix).generation)
    finally:
        close(client)
    engine.produce(events[half:])
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    resumed = engine.worker_thread()
    try:
        settled(engine, redis_url, tallies, convs)
    finally:
        resumed.stop()
        engine.close()
    assert_exact(events, SHORT_WINDOWS, tallies, convs)


def test_rebuild_refuses_while_workers_are_in_the_group(kafka_bootstrap: str, redis_url: str) -> None:
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8])
    engine = Engine(config)
    engine.put_settings(SHORT_WINDOWS)
    worker = engine.worker_thread()
    try:
        deadline = time.monotonic() + 30
        while not worker.worker.assigned:
            assert time.monotonic() < deadline, "worker never joined"
            time.sleep(0.1)
        before = worker.worker.generation
        with pytest.raises(AttributionError, match="stop every worker first"):
            rebuild(config, "earliest")
        client = connect(redis_url)
        try:  # refused before touching anything: the running worker's state generation stands
            assert client.get(Keys(config.redis_prefix).generation) == str(before).encode()
        finally:
            close(client)
    finally:
        worker.stop()
        engine.close()


def test_exactly_once_mode_survives_a_kill_with_exact_outputs(kafka_bootstrap: str, redis_url: str) -> None:
    """The restarted worker keeps its transactional id, as a deployment does (the pod's name): its
    init fences the killed one and aborts its open transaction. With a new id that transaction would
    stay open until the broker times it out, and read_committed readers of the identity topic (an
    input) could not pass it; the embedded broker never times it out."""
    config = engine_config(
        kafka_bootstrap,
        redis_url,
        uuid.uuid4().hex[:8],
        exactly_once=True,
        batch_size=300,
        transactional_id="worker-0",
    )
    engine = Engine(config)
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 10 * 60_000, 1000, 10, seed=8)
    engine.produce(events)
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    first = engine.worker_process()
    convs.until(lambda recs: len(recs) > 20, timeout_s=60, what="progress")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    final = engine.worker_process()
    try:
        settled(engine, redis_url, tallies, convs)
    finally:
        final.send_signal(signal.SIGTERM)
        code = final.wait(60)
        engine.close()
    assert code == 0, Path(engine.logs[-1]).read_text()[-2000:]
    assert_exact(events, SHORT_WINDOWS, tallies, convs)


def test_a_redis_error_during_rebuild_replays_from_the_start_not_the_old_commits(
    kafka_bootstrap: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild replays from its own start offsets. A Redis error before its first commit must go
    back there, not to the group's committed offsets (the old workers': the end of the topics)."""
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8])
    engine = Engine(config)
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 5 * 60_000, 1000, 4, seed=3)
    engine.produce(events)
    worker = engine.worker_thread()
    consumed_everything(engine)
    worker.stop()
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")

    failed: list[int] = []
    real_apply = Processor.apply

    def apply_once_failing(self: Processor, located: Any, *args: Any) -> Any:
        if located and not failed:  # fault injection: the first batch of the replay
            failed.append(len(located))
            raise redis.ConnectionError("injected: connection reset by peer")
        return real_apply(self, located, *args)

    monkeypatch.setattr(Processor, "apply", apply_once_failing)
    try:
        summary = rebuild(config, "earliest", force=True)
        assert failed and int(str(summary["batches"])) > 0
        settled(engine, redis_url, tallies, convs)
    finally:
        engine.close()
    assert_exact(events, SHORT_WINDOWS, tallies, convs)
