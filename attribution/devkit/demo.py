"""``attribution demo`` (what ``make run`` runs): local services, topics, settings, a worker process,
``attribution serve`` (the live campaign page), live demo traffic, and a terminal view of the tallies
as they change. Ctrl-C stops everything."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
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

DEMO_WEB_SHARE = 0.2  # a fifth of the demo's stories are KARTE web-push ones
PREFERRED_API_PORT = 8080
SERVE_READY_S = 30.0


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
        serve: subprocess.Popen[bytes] | None = None
        try:
            serve, page = start_serve(stop)
            traffic.start()
            _watch(config, stop, duration_s, worker, page)
        finally:
            stop.set()
            if traffic.is_alive():
                traffic.join(5)
            for child in (worker, serve):
                if child is not None:
                    _stop(child)
        serve_ok = serve is None or serve.returncode in (0, -signal.SIGTERM, -signal.SIGINT)
        return 0 if worker.returncode in (0, -signal.SIGTERM) and serve_ok else 1


def _stop(child: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _port_free(host: str, port: int) -> bool:
    try:
        socket.create_server((host, port)).close()
    except OSError:
        return False
    return True


def _ready(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_serve(stop: threading.Event) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """``attribution serve`` beside the worker, on ATTRIBUTION_API_PORT when set, else 8080 when it is
    free, else a free port (on ATTRIBUTION_API_HOST, else loopback). Returns the process and the page's
    address once /readyz answers 200 (a process that failed to start: None, None)."""
    host = os.environ.get("ATTRIBUTION_API_HOST") or "127.0.0.1"
    fixed = os.environ.get("ATTRIBUTION_API_PORT")
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    shown = f"[{local}]" if ":" in local else local
    ports = [int(fixed)] if fixed else [PREFERRED_API_PORT, embedded.free_port(), embedded.free_port()]
    for port in ports:
        if not fixed and not _port_free(host, port):
            continue
        env = {**os.environ, "ATTRIBUTION_API_HOST": host, "ATTRIBUTION_API_PORT": str(port)}
        serve = subprocess.Popen([sys.executable, "-m", "attribution.cli", "serve"], env=env)
        deadline = time.monotonic() + SERVE_READY_S
        delay = 0.05
        while serve.poll() is None and not _ready(local, port) and time.monotonic() < deadline:
            if stop.wait(delay):  # a poll with a deadline: serve reads the output topics, then is ready
                return serve, None
            delay = min(delay * 2, 0.5)
        if stop.is_set():
            return serve, None
        if serve.poll() is not None:  # e.g. the port was taken meanwhile: try the next one
            print(f"attribution serve exited with {serve.returncode} (port {port})", flush=True)
            continue
        page = f"http://{shown}:{port}/"
        note = "" if _ready(local, port) else " (still catching up)"
        if os.environ.get("ATTRIBUTION_API_TOKEN"):
            note += " (open it once as /?token=<ATTRIBUTION_API_TOKEN>)"
        print(f"live campaign page: {page}{note}", flush=True)
        return serve, page
    print("live campaign page: not started (see the errors above)", flush=True)
    return None, None


def _traffic(config: Any, rate: int, stop: threading.Event) -> None:
    producer = Producer(config.kafka({"linger.ms": 20, "enable.idempotence": True}))
    traffic = Traffic(web_share=DEMO_WEB_SHARE)
    tick_s = 0.1
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        for kind, key, value in traffic.events(now_ms, max(1, int(rate * tick_s))):
            producer.produce(config.topic(kind), key=key.encode(), value=orjson.dumps(value))
        producer.poll(0)
        stop.wait(tick_s)
    producer.flush(10)


def _watch(
    config: Any,
    stop: threading.Event,
    duration_s: float,
    worker: subprocess.Popen[bytes],
    page: str | None = None,
) -> None:
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
    consumer.subscribe([config.topic("tallies"), config.topic("subscriptions")])
    latest: dict[str, dict[str, Any]] = {}
    subscriptions: dict[str, dict[str, Any]] = {}
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
                    if "campaign_id" in snap:
                        key, into = f"{snap['project_id']}:{snap['campaign_id']}", latest
                    else:  # a subscriptions record: the project's, or a day's
                        key, into = f"{snap['project_id']}:{snap.get('day') or ''}", subscriptions
                    if snap["version"] >= into.get(key, {}).get("version", -1):
                        into[key] = snap
            if time.monotonic() >= next_draw:
                print(render(latest, page, subscriptions), flush=True)
                next_draw = time.monotonic() + 1.0
    finally:
        consumer.close()


def render(
    tallies: dict[str, dict[str, Any]],
    page: str | None = None,
    subscriptions: dict[str, dict[str, Any]] | None = None,
) -> str:
    """A plain-text table of the latest tallies and a line of web-push subscriptions per project
    (clears the screen when stdout is a terminal)."""
    title = "live tallies (Ctrl-C to stop)" + (f"; live campaign page: {page}" if page else "")
    lines = ["\x1b[2J\x1b[H" if sys.stdout.isatty() else "", title, ""]
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
    for key, now in sorted((subscriptions or {}).items()):
        if now.get("day") is None:
            today = (subscriptions or {}).get(f"{key}{now['today']}", {})
            lines.append(
                f"web push {now['project_id']}: subscribed now {now['subscribed_now']}, among visitors of "
                f"the last {now['visitor_days']} days {now['subscribed_recent_visitors']}, "
                f"subscribe sessions today ({now['today']}, {now['timezone']}) "
                f"{today.get('subscribe_sessions', 0)}"
            )
    return "\n".join(lines)
