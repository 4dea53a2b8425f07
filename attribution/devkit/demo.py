"""``attribution demo`` (what ``make run`` runs): local services, topics, settings, a worker process,
live demo traffic, and a terminal view of the tallies as they change. Ctrl-C stops everything."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from attribution.core.rules import parse_settings
from attribution.devkit import embedded
from attribution.devkit.traffic import DEMO_SETTINGS, Traffic
from attribution.infra.config import load_config
from attribution.runtime.kafka_io import create_topics
from attribution.runtime.settings_sync import publish


@contextlib.contextmanager
def services() -> Iterator[dict[str, str]]:
    """Environment for the worker: the configured services, or embedded ones started here."""
    env: dict[str, str] = {}
    started: list[Any] = []
    try:
        if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            broker = embedded.start_kafka()
            started.append(broker)
            env["KAFKA_BOOTSTRAP_SERVERS"] = broker.url
            print(f"embedded Kafka-protocol broker (tansu) on {broker.url}")
        if not os.environ.get("REDIS_URL"):
            redis_proc = embedded.start_redis()
            started.append(redis_proc)
            env["REDIS_URL"] = redis_proc.url
            print(f"embedded Redis (valkey) on {redis_proc.url}")
        yield env
    finally:
        for proc in reversed(started):
            proc.stop()


def run_demo(rate: int, duration_s: float, partitions: int) -> int:
    with services() as env:
        os.environ.update(env)
        os.environ.setdefault("ATTRIBUTION_SESSION_TIMEOUT_MS", "6000")
        config = load_config()
        for topic, status in create_topics(config, partitions).items():
            print(f"topic {topic}: {status}")
        publish(config, [parse_settings(DEMO_SETTINGS)])
        print(f"demo settings loaded for project {DEMO_SETTINGS['project_id']}")
        worker = subprocess.Popen([sys.executable, "-m", "attribution.cli", "worker"], env={**os.environ})
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        traffic = threading.Thread(target=_traffic, args=(config, rate, stop), daemon=True)
        traffic.start()
        try:
            _watch(config, stop, duration_s, worker)
        finally:
            stop.set()
            traffic.join(5)
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        return 0 if worker.returncode in (0, -signal.SIGTERM) else 1


def _traffic(config: Any, rate: int, stop: threading.Event) -> None:
    producer = Producer(config.kafka({"linger.ms": 20, "enable.idempotence": True}))
    traffic = Traffic()
    tick_s = 0.1
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        for kind, key, value in traffic.events(now_ms, max(1, int(rate * tick_s))):
            producer.produce(config.topic(kind), key=key.encode(), value=orjson.dumps(value))
        producer.poll(0)
        stop.wait(tick_s)
    producer.flush(10)


def _watch(config: Any, stop: threading.Event, duration_s: float, worker: subprocess.Popen[bytes]) -> None:
    consumer = Consumer(
        config.kafka(
            {
                "group.id": f"demo-view-{os.getpid()}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
    )
    consumer.subscribe([config.topic("tallies")])
    latest: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + duration_s if duration_s else None
    next_draw = 0.0
    try:
        while not stop.is_set() and worker.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                break
            for msg in consumer.consume(1000, 0.2):
                value = msg.value()
                if msg.error() is None and value is not None:
                    snap = orjson.loads(value)
                    key = f"{snap['project_id']}:{snap['campaign_id']}"
                    if snap["version"] >= latest.get(key, {}).get("version", -1):
                        latest[key] = snap
            if time.monotonic() >= next_draw:
                print(render(latest), flush=True)
                next_draw = time.monotonic() + 1.0
    finally:
        consumer.close()


def render(tallies: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the latest tallies (clears the screen when stdout is a terminal)."""
    lines = ["\x1b[2J\x1b[H" if sys.stdout.isatty() else "", "live tallies (Ctrl-C to stop)", ""]
    header = (
        f"{'campaign':<16}{'sends':>8}{'users':>7}{'failed':>7}{'clicks':>8}  "
        f"{'purchase (primary)':<34}{'signup':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for key in sorted(tallies):
        t = tallies[key]
        purchase = t["events"].get("purchase", {})
        signup = t["events"].get("signup", {})
        primary = purchase.get("primary", "send")
        conv = purchase.get(primary, {}).get("conversions", 0)
        revenue = purchase.get(primary, {}).get("revenue", {}).get("KRW", "0")
        p_text = f"{conv} ({primary}) {purchase.get('rate', 0):.1%} KRW {revenue}"
        s_conv = signup.get(signup.get("primary", "send"), {}).get("conversions", 0)
        lines.append(
            f"{t['campaign_id']:<16}{t['sends']:>8}{t['send_users']:>7}{t['failed']:>7}{t['clicks']:>8}  "
            f"{p_text:<34}{s_conv:>8}"
        )
    if not tallies:
        lines.append("(waiting for the first tallies: the worker joins its group in a few seconds)")
    return "\n".join(lines)
