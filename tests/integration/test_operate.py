"""What an operator meets first, through the real `attribution` command against a real broker and
Redis: settings that never roll back, a broker that is not there, readiness, a port in use, missing
topics, partition counts, a Redis outage."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson
import pytest

from tests.integration.test_recovery import HOUR, SHORT_WINDOWS, scenario
from tests.support.kafka import Engine, engine_config, env_of
from tests.support.outcome import assert_exact, settled
from tests.support.proxy import Proxy
from tests.support.scenarios import PROJECT, settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def attribution(*args: str, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attribution", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _settings_file(tmp_path: Path, version: int, window_ms: int = 3_600_000) -> Path:
    doc = msgspec.to_builtins(settings())
    doc["version"] = version
    for ev in doc["conversion_events"]:
        ev["window_ms"] = window_ms
    path = tmp_path / f"v{version}-{window_ms}.json"
    path.write_bytes(orjson.dumps(doc))
    return path


@pytest.fixture
def engine(kafka_bootstrap: str, redis_url: str) -> Iterator[Engine]:
    eng = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))
    yield eng
    eng.close()


def test_settings_put_refuses_a_version_that_is_not_newer_naming_both(engine: Engine, tmp_path: Path) -> None:
    env = env_of(engine.config)
    v3 = _settings_file(tmp_path, 3)
    done = attribution("settings", "put", str(v3), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{PROJECT} v3: published"
    again = attribution("settings", "put", str(v3), env=env)  # deploy jobs re-run: a no-op
    assert again.returncode == 0 and "v3: unchanged (already published)" in again.stdout
    older = _settings_file(tmp_path, 2)
    refused = attribution("settings", "put", str(older), env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(f"attribution: bad setting {older}: ")
    assert "v2 is not newer than v3" in refused.stderr
    other = _settings_file(tmp_path, 3, window_ms=60_000)  # same version, other content
    assert attribution("settings", "put", str(other), env=env).returncode == 2


def test_a_restarted_worker_never_goes_back_to_an_older_settings_version(
    kafka_bootstrap: str, redis_url: str
) -> None:
    """A compacted settings topic may keep only the last record of a project, which can be an older
    version than the one in force. The worker keeps the newest in Redis and takes it at start."""
    unique = uuid.uuid4().hex[:8]
    first = Engine(engine_config(kafka_bootstrap, redis_url, unique))
    newer = msgspec.structs.replace(settings(), version=3)
    first.put_settings(newer)
    worker = first.worker_thread()
    _wait(lambda: worker.worker.book.get(PROJECT) is not None, "v3 in force")
    worker.stop()
    first.close()
    # the same Redis state, a settings topic that holds only v2 (as compaction may leave it)
    compacted = engine_config(
        kafka_bootstrap, redis_url, unique, topic_prefix=f"t{unique}-compacted.", group_id=f"g{unique}-2"
    )
    second = Engine(compacted)
    second.put_settings(msgspec.structs.replace(settings(), version=2))
    restarted = second.worker_thread()
    try:
        _wait(lambda: restarted.worker.started, "the restarted worker running")
        in_force = restarted.worker.book.get(PROJECT)
        assert in_force is not None and in_force.version == 3
    finally:
        restarted.stop()
        second.close()


def _wait(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_without_a_broker_each_command_says_so_in_one_line(redis_url: str, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{_free_port()}"
    config = engine_config(nowhere, redis_url, uuid.uuid4().hex[:8])
    env = env_of(config)
    for args in (["worker"], ["topics", "create"], ["settings", "put", str(_settings_file(tmp_path, 1))]):
        started = time.monotonic()
        done = attribution(*args, env=env)
        took = time.monotonic() - started
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (args, done.stderr)
        assert len(lines) == 1, (args, lines[:5])
        assert f"KAFKA_BOOTSTRAP_SERVERS={nowhere}" in lines[0], lines[0]
        assert took < 20, (args, took)
    # `tally` reads Redis only: no broker needed, and an unreachable Redis is named in one line
    done = attribution("tally", PROJECT, "none", env={**env, "REDIS_URL": f"redis://{nowhere}/0"})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "REDIS_URL" in done.stderr


def test_missing_topics_are_named_with_the_way_out(kafka_bootstrap: str, redis_url: str) -> None:
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8])  # no topics created
    done = attribution("worker", env=env_of(config))
    assert done.returncode == 1
    assert f"topics {config.topic('sends')}" in done.stderr
    assert "run `attribution topics create`" in done.stderr
    assert "bad setting" not in done.stderr


def test_topics_create_warns_when_an_existing_topic_has_another_partition_count(engine: Engine) -> None:
    done = attribution("topics", "create", "--partitions", "5", env=env_of(engine.config))
    assert done.returncode == 0, done.stderr
    assert f"{engine.config.topic('sends')}: exists with 3 partitions, not 5" in done.stdout
    assert f"{engine.config.topic('settings')}: exists" in done.stdout.splitlines()
    assert "warning" in done.stderr and "3 partitions, not 5" in done.stderr


def test_a_metrics_port_in_use_is_refused_naming_the_setting(engine: Engine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {
            **env_of(engine.config),
            "ATTRIBUTION_METRICS_PORT": str(port),
            "ATTRIBUTION_METRICS_HOST": "127.0.0.1",
        }
        done = attribution("worker", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"attribution: bad setting ATTRIBUTION_METRICS_PORT: cannot listen on 127.0.0.1:{port} "
        "(Address already in use); pick a free port, or 0 to serve no metrics"
    ]


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def test_readyz_waits_for_the_group_join_and_lists_no_project(engine: Engine) -> None:
    engine.put_settings(settings())
    port = _free_port()
    worker = engine.worker_thread(metrics_port=port, metrics_host="127.0.0.1")
    seen: list[tuple[int, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + 60
        while not seen or seen[-1][0] != 200:
            assert time.monotonic() < deadline, seen[-3:]
            with contextlib.suppress(OSError):
                seen.append(_get(port, "/readyz"))
            time.sleep(0.05)
        not_ready = [body for code, body in seen if code == 503]
        assert not_ready, "ready before the group join"
        assert all(body["assigned_partitions"] == 0 for body in not_ready)
        assert seen[-1][1] == {"ok": True, "joined": True, "assigned_partitions": 15}  # 5 inputs x 3
        assert all(PROJECT not in orjson.dumps(b).decode() for _, b in seen)
    finally:
        worker.stop()


def test_worker_survives_a_redis_outage_and_stays_exact(
    kafka_bootstrap: str, redis_url: str, proxied_redis: tuple[str, Proxy], runtime: str
) -> None:
    """On both runtimes: the confluent worker goes back to its last commit, the Faust agents apply
    the released batch again; either way after a growing backoff, and the result is exact."""
    url, proxy = proxied_redis
    port = _free_port()
    config = engine_config(kafka_bootstrap, url, uuid.uuid4().hex[:8], runtime=runtime, metrics_port=port)
    engine = Engine(config)
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 10 * 60_000, 1000, 6, seed=8)
    half = len(events) // 2
    tallies, convs, dlq = engine.reader("tallies"), engine.reader("conversions"), engine.reader("dlq")
    worker = engine.worker()
    try:
        engine.produce(events[:half])
        convs.until(lambda recs: len(recs) > 10, timeout_s=60, what="first conversions")
        proxy.cut()
        engine.produce(events[half:])
        engine.produce_raw("sends", b"outage-u", b"{not json")  # decoded in a cycle Redis fails
        # the outage lasts: the worker keeps trying again, with backoff, instead of exiting
        _wait(lambda: _served_redis_errors(port) >= 3 or not worker.alive(), "three Redis errors", 60)
        assert worker.alive(), engine.log_tail()
        proxy.restore()
        settled(engine, redis_url, tallies, convs)
        assert worker.alive(), engine.log_tail()
        dlq.read_to_end()
    finally:
        worker.stop()
        engine.close()
    assert_exact(events, SHORT_WINDOWS, tallies, convs)
    assert [d["raw"] for d in dlq.records] == ["{not json"], "dead-lettered once, after the outage"


def _served_redis_errors(port: int) -> float:
    """attribution_redis_errors_total from the worker's /metrics (any runtime, thread or process)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        lines = r.read().decode().splitlines()
    prefix = "attribution_redis_errors_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def _redis_errors(metrics: Any) -> float:
    return float(
        sum(
            s.value
            for family in metrics.redis_errors.collect()
            for s in family.samples
            if s.name == "attribution_redis_errors_total"
        )
    )


@pytest.fixture
def proxied_redis(redis_url: str) -> Iterator[tuple[str, Proxy]]:
    """REDIS_URL through a proxy that can cut the worker off Redis."""
    upstream = urlsplit(redis_url)
    proxy = Proxy((upstream.hostname or "127.0.0.1", upstream.port or 6379))
    yield f"redis://127.0.0.1:{proxy.port}/0", proxy
    proxy.cut()


def test_a_settings_change_during_a_redis_outage_is_taken_in_once_redis_is_back(
    kafka_bootstrap: str, redis_url: str, proxied_redis: tuple[str, Proxy]
) -> None:
    url, proxy = proxied_redis
    engine = Engine(engine_config(kafka_bootstrap, url, uuid.uuid4().hex[:8]))
    engine.put_settings(settings())
    worker = engine.worker_thread()
    try:
        _wait(lambda: worker.worker.started and worker.worker.joined, "the worker running")
        proxy.cut()
        _wait(lambda: _redis_errors(worker.worker.metrics) >= 1, "a Redis error")
        engine.put_settings(msgspec.structs.replace(settings(), version=2))
        _wait(lambda: _redis_errors(worker.worker.metrics) >= 3, "more attempts during the outage")
        proxy.restore()
        metrics = worker.worker.metrics
        _wait(lambda: metrics.settings_version.labels(PROJECT)._value.get() == 2, "v2 exported")
        kept = worker.worker.store.settings_documents()
        assert [orjson.loads(d)["version"] for d in kept] == [2]
    finally:
        worker.stop()
        engine.close()


def test_sigterm_during_a_redis_outage_stops_cleanly(
    kafka_bootstrap: str, proxied_redis: tuple[str, Proxy]
) -> None:
    url, proxy = proxied_redis
    engine = Engine(engine_config(kafka_bootstrap, url, uuid.uuid4().hex[:8], metrics_port=_free_port()))
    engine.put_settings(settings())
    process = engine.worker_process()
    try:
        port = engine.config.metrics_port
        _wait(lambda: _ready(port), "the worker ready", 60)
        proxy.cut()
        _wait(lambda: not _ready(port), "the worker not ready while Redis is away", 30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        engine.close()
    log = Path(engine.logs[-1]).read_text()
    assert "Traceback" not in log and "tallies not published at stop" in log


def _ready(port: int) -> bool:
    try:
        return _get(port, "/readyz")[0] == 200
    except OSError:
        return False
