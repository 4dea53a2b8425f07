"""Real-broker helpers for integration tests: an isolated engine (own topics, Redis prefix, group),
a worker in a thread or a process, producing events and reading outputs with deadlines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from attribution.core.model import Event
from attribution.core.rules import ProjectSettings
from attribution.infra.config import Config, load_config
from attribution.runtime.kafka_io import create_topics
from attribution.runtime.settings_sync import publish
from attribution.runtime.worker import Worker
from tests.support.harness import kind


def engine_config(kafka: str, redis_url: str, unique: str, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka,
        "redis_url": redis_url,
        "topic_prefix": f"t{unique}.",
        "group_id": f"g{unique}",
        "redis_prefix": f"r{unique}",
        "metrics_port": 0,
        "session_timeout_ms": 6000,
        "tally_interval_ms": 100,
        "partitions": 3,
    }
    return load_config(**{**values, **overrides})


def env_of(config: Config) -> dict[str, str]:
    """The environment that makes `attribution worker` use ``config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTRIBUTION_", "KAFKA_", "REDIS_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = config.kafka_bootstrap_servers
    env["REDIS_URL"] = config.redis_url.get_secret_value()
    env["TMPDIR"] = WORKER_TMP
    for name in (
        "topic_prefix",
        "group_id",
        "redis_prefix",
        "metrics_port",
        "session_timeout_ms",
        "tally_interval_ms",
        "grace_ms",
        "batch_size",
        "state_check_ms",
        "exactly_once",
        "cache_mb",
        "log_level",
        "runtime",
    ):
        value = str(getattr(config, name))
        env[f"ATTRIBUTION_{name.upper()}"] = value if name in ("log_level", "runtime") else value.lower()
    if config.transactional_id is not None:
        env["ATTRIBUTION_TRANSACTIONAL_ID"] = config.transactional_id
    return env


#: every worker log file the tests created; the session removes them at its end (conftest)
WORKER_LOGS: list[str] = []
#: TMPDIR of the worker processes: a worker killed with SIGKILL leaves its temporary files (the Faust
#: runtime's data directory) there, and the session removes it at its end
WORKER_TMP = tempfile.mkdtemp(prefix="attribution-tests-")


def remove_worker_logs() -> None:
    """At the end of the session; KEEP_WORKER_LOGS=1 keeps them (for a post-mortem)."""
    shutil.rmtree(WORKER_TMP, ignore_errors=True)
    if os.environ.get("KEEP_WORKER_LOGS") == "1":
        return
    while WORKER_LOGS:
        Path(WORKER_LOGS.pop()).unlink(missing_ok=True)


@dataclass
class Engine:
    config: Config
    producer: Producer = field(init=False)

    def __post_init__(self) -> None:
        self.readers: list[TopicReader] = []
        self.logs: list[str] = []
        # (topic, partition) -> one past the highest offset the broker acknowledged for our records:
        # the end of what we produced, which the embedded broker's ListOffsets can under-report
        self.produced_ends: dict[tuple[str, int], int] = {}
        create_topics(self.config)
        # log_level 2: critical only; an engine left open after its broker stopped stays quiet
        self.producer = Producer(
            self.config.kafka(
                {
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    "log_level": 2,
                    "on_delivery": self._delivered,
                }
            )
        )

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            tp = (msg.topic(), msg.partition())
            self.produced_ends[tp] = max(self.produced_ends.get(tp, 0), (msg.offset() or 0) + 1)

    def put_settings(self, *settings: ProjectSettings) -> None:
        publish(self.config, settings)

    def produce(self, events: Iterable[Event]) -> int:
        n = 0
        for e in events:
            self.producer.produce(
                self.config.topic(kind(e)), key=e.user_key.encode(), value=msgspec.json.encode(e)
            )
            n += 1
            if n % 10_000 == 0:
                self.producer.poll(0)
        assert self.producer.flush(30) == 0
        return n

    def produce_raw(self, kind_name: str, key: bytes | None, value: bytes) -> None:
        self.producer.produce(self.config.topic(kind_name), key=key, value=value)
        assert self.producer.flush(30) == 0

    def reader(self, kind_name: str) -> TopicReader:
        reader = TopicReader(self.config, self.config.topic(kind_name))
        self.readers.append(reader)
        return reader

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers.clear()

    def worker_thread(self, **overrides: Any) -> WorkerThread:
        """The confluent worker in a thread of this process (its internals in reach of the test)."""
        config = self.config.model_copy(update=overrides) if overrides else self.config
        return WorkerThread(Worker(config))

    def worker(self, **overrides: Any) -> WorkerThread | WorkerProcess:
        """A worker of the engine's runtime: the confluent worker in a thread of this process; the
        Faust runtime (an event loop and signal handlers of its own) in a child process."""
        config = self.config.model_copy(update=overrides) if overrides else self.config
        if config.runtime == "faust":
            return WorkerProcess(self, self.worker_process(config))
        return WorkerThread(Worker(config))

    def worker_process(self, config: Config | None = None) -> subprocess.Popen[bytes]:
        """`attribution worker` in a child process; its log goes to a temporary file (see ``logs``)."""
        with open(self.new_log(), "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "attribution.cli", "worker"],
                env=env_of(config or self.config),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def new_log(self) -> str:
        """A temporary file for a worker process' log (``log_tail`` reads the newest)."""
        log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)  # noqa: SIM115
        log.close()
        self.logs.append(log.name)
        WORKER_LOGS.append(log.name)
        return log.name

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the newest worker process' log, for an assertion message."""
        return Path(self.logs[-1]).read_text()[-chars:] if self.logs else ""


class WorkerThread:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop within 60 s"
        if self.error is not None:
            raise self.error


class WorkerProcess:
    """A worker in a child process, stopped like the confluent ``WorkerThread``: SIGTERM, then it
    must exit 0 within 60 s."""

    def __init__(self, engine: Engine, proc: subprocess.Popen[bytes]) -> None:
        self.engine = engine
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"worker did not stop within 60 s: {self.engine.log_tail()}") from None
        assert code == 0, f"worker exited with {code}: {self.engine.log_tail()}"


class TopicReader:
    """Reads a whole topic (all partitions, from the beginning), keeping what it has seen."""

    def __init__(self, config: Config, topic: str) -> None:
        self.consumer = Consumer(
            config.kafka(
                {
                    "group.id": f"reader-{topic}-{time.monotonic_ns()}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        self.records: list[dict[str, Any]] = []
        self.keys: list[str | None] = []  # the Kafka key of each of ``records``
        self.closed = False

    def poll(self, timeout_s: float = 0.2) -> list[dict[str, Any]]:
        fresh = []
        for msg in self.consumer.consume(10_000, timeout_s):
            value = msg.value()
            if msg.error() is None and value is not None:
                fresh.append(orjson.loads(value))
                key = msg.key()
                self.keys.append(None if key is None else key.decode("utf-8", "replace"))
        self.records += fresh
        return fresh

    def read_to_end(self, timeout_s: float = 30.0) -> None:
        """Consume until the position of every partition reaches its high watermark as of now."""
        assignment = self.consumer.assignment()
        ends = {
            (tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in assignment
        }
        deadline = time.monotonic() + timeout_s
        self.poll()
        # the embedded broker's ListOffsets can answer the base offset of the last batch + 1; the high
        # watermark of a fetch response (cached by the client) is the real end
        for tp in assignment:
            k = (tp.topic, tp.partition)
            ends[k] = max(ends[k], self.consumer.get_watermark_offsets(tp, cached=True)[1])
        while True:
            positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(assignment)}
            if all(end == 0 or positions[k] >= end for k, end in ends.items()):
                return
            assert time.monotonic() < deadline, f"topic not read to its end: {positions} < {ends}"
            self.poll()

    def until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 45.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or done}")
            self.poll()

    def latest_tallies(self) -> dict[tuple[str, str], dict[str, Any]]:
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for t in self.records:
            key = (t["project_id"], t["campaign_id"])
            if t["version"] >= latest.get(key, {"version": -1})["version"]:
                latest[key] = t
        return latest

    def last_by_key(self) -> dict[str | None, dict[str, Any]]:
        """The last record read of each Kafka key: what a compacted topic keeps (one key, one
        partition, read in offset order)."""
        return dict(zip(self.keys, self.records, strict=True))

    def latest_subscriptions(self) -> dict[str, dict[str, Any]]:
        """The subscriptions topic's newest record (highest version) per Kafka key: ``project`` for
        the now-record, ``project:day`` for a day's."""
        latest: dict[str, dict[str, Any]] = {}
        for key, r in zip(self.keys, self.records, strict=True):
            assert key is not None, r
            if r["version"] >= latest.get(key, {"version": -1})["version"]:
                latest[key] = r
        return latest

    def latest_by_id(self) -> dict[str, dict[str, Any]]:
        """The latest record per conversion id, without the ids whose latest record retracts them."""
        latest = {c["conversion_id"]: c for c in self.records}
        return {cid: c for cid, c in latest.items() if not c.get("retracted")}

    def close(self) -> None:
        if not self.closed:
            self.consumer.close()
            self.closed = True
