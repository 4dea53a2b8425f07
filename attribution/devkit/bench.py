"""``attribution bench`` / ``make bench``: throughput, latency and memory, measured in one run.

Prints a table and writes ``bench-results.json``. Every figure comes from this run on this machine,
so compare ratios (engine / ceiling, engine / naive) across runs, not absolutes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from attribution.contract.topics import INPUTS
from attribution.core.rules import SettingsBook, parse_settings
from attribution.core.user_state import decode_state
from attribution.devkit.bench_links import identity_backlog
from attribution.devkit.bench_load import SETTINGS, Shape, backlog
from attribution.devkit.bench_rss import lag, worker_rss
from attribution.devkit.bench_runtimes import render as runtime_rows
from attribution.devkit.bench_runtimes import side_by_side
from attribution.devkit.demo import services
from attribution.devkit.traffic import Traffic
from attribution.engine.processor import EngineConfig, Processor, Record
from attribution.infra.config import Config, load_config
from attribution.runtime.kafka_io import create_topics
from attribution.runtime.settings_sync import publish
from attribution.runtime.worker import Worker
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

LATENCY_FETCH_WAIT_MS = 10


def _fresh(base: Config, **extra: Any) -> Config:
    tag = uuid.uuid4().hex[:8]
    config = base.model_copy(
        update={
            "topic_prefix": f"bench{tag}.",
            "group_id": f"bench{tag}",
            "redis_prefix": f"bench{tag}",
            "metrics_port": 0,
            **extra,
        }
    )
    create_topics(config, config.partitions)
    publish(config, [parse_settings(SETTINGS)])
    return config


def _produce(config: Config, records: list[tuple[str, bytes, bytes]]) -> float:
    producer = Producer(
        config.kafka(
            {"linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 2_000_000}
        )
    )
    started = time.perf_counter()
    for i, (kind, key, value) in enumerate(records):
        producer.produce(config.topic(kind), key=key, value=value)
        if i % 20_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return time.perf_counter() - started


def _ceiling(config: Config, total: int, produce: bool) -> float:
    """Events/s of a bare consume(10000) + orjson.loads loop (+ one small produce per event)."""
    consumer = Consumer(
        config.kafka(
            {
                "group.id": f"ceiling-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
    )
    consumer.subscribe([config.topic(k) for k in INPUTS])
    producer = Producer(config.kafka({"linger.ms": 5})) if produce else None
    seen, started = 0, 0.0
    deadline = time.monotonic() + 600
    while seen < total and time.monotonic() < deadline:
        batch = consumer.consume(10_000, 0.5)
        if batch and not started:
            started = time.perf_counter()
        for m in batch:
            if m.error() is None:
                orjson.loads(m.value() or b"{}")
                seen += 1
                if producer is not None:
                    producer.produce(config.topic("dlq"), value=b'{"ok":1}')
        if producer is not None:
            producer.poll(0)
    if producer is not None:
        producer.flush(60)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed if elapsed else 0.0


def _caught_up(config: Config, timeout_s: float = 1800) -> None:
    probe = Consumer(config.kafka({"group.id": config.group_id, "enable.auto.commit": False}))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if lag(probe, config) == 0:
                return
            time.sleep(0.05)
        raise TimeoutError("engine did not catch up")
    finally:
        probe.close()


def _engine(config: Config, total: int) -> dict[str, Any]:
    worker = Worker(config)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while not worker.assigned:  # the group join (about half the session timeout here) is not the engine
        time.sleep(0.01)
    started = time.perf_counter()
    _caught_up(config)
    elapsed = time.perf_counter() - started
    stages = {
        s.labels["stage"]: s.value
        for s in next(iter(worker.metrics.batch_seconds.collect())).samples
        if s.name.endswith("_sum")
    }
    worker.stop()
    thread.join(60)
    return {
        "events_per_s": total / elapsed,
        "seconds": elapsed,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
    }


def _identity_cost(base: Config, shape: Shape, now: int) -> dict[str, Any]:
    """Catch-up of the identity backlog with identities off, then on (the same records)."""
    records = identity_backlog(shape, now - 6 * 3600_000, 4 * 3600_000)
    out: dict[str, Any] = {"events": len(records)}
    for on in (False, True):
        config = _fresh(base, identities=on)
        _produce(config, records)
        out["on" if on else "off"] = _engine(config, len(records))
        if on:
            probe = Consumer(config.kafka({"group.id": f"count-{uuid.uuid4().hex[:6]}"}))
            out["identity_records"] = sum(
                probe.get_watermark_offsets(TopicPartition(config.topic("identity"), p), timeout=10)[1]
                for p in range(config.partitions)
            )
            probe.close()
    out["on_over_off"] = out["on"]["events_per_s"] / out["off"]["events_per_s"]
    return out


def _naive(config: Config, records: list[tuple[str, bytes, bytes]]) -> float:
    """The same semantics with one load and one apply round trip per event."""
    keys = Keys(config.redis_prefix + "-naive")
    store = RedisStore.from_url(config.redis_url.get_secret_value(), keys, config.tally_ttl_ms)
    processor = Processor(
        store, keys, SettingsBook([parse_settings(SETTINGS)]), EngineConfig(config.grace_ms)
    )
    started = time.perf_counter()
    for offset, (kind, key, value) in enumerate(records):
        processor.process([Record(kind, kind, 0, offset, key, value)])
    return len(records) / (time.perf_counter() - started)


def _in_thread(config: Config) -> Callable[[], None]:
    """The confluent worker in a thread, once it has joined its group; returns the way to stop it."""
    worker = Worker(config)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while not worker.assigned:
        time.sleep(0.01)

    def stop() -> None:
        worker.stop()
        thread.join(60)

    return stop


def _latency(
    config: Config, rate: int, seconds: float, start: Callable[[Config], Callable[[], None]] = _in_thread
) -> dict[str, float]:
    """Goal-to-tally latency under a steady load: tally receive time minus its as_of_ts (event time = now)."""
    stop_worker = start(config)
    reader = Consumer(  # the reader must not add latency of its own: fetches answered at once
        config.kafka(
            {
                "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "latest",
                "session.timeout.ms": 6000,
                "fetch.wait.max.ms": 5,
            }
        )
    )
    reader.subscribe([config.topic("tallies")])
    while not reader.assignment():
        reader.consume(100, 0.1)
    stop = threading.Event()
    producer = Producer(config.kafka({"linger.ms": 2}))
    traffic = Traffic(seed=9, users=50_000, project=SETTINGS["project_id"])

    def load() -> None:
        tick = 0.02
        while not stop.is_set():
            for kind, key, value in traffic.events(int(time.time() * 1000), int(rate * tick)):
                producer.produce(config.topic(kind), key=key.encode(), value=orjson.dumps(value))
            producer.poll(0)
            stop.wait(tick)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in reader.consume(1000, 0.1):
            if m.error() is None and m.value():
                samples.append(time.time() * 1000 - orjson.loads(m.value() or b"{}")["as_of_ts"])
    stop.set()
    loader.join(5)
    reader.close()
    stop_worker()
    samples.sort()

    def pick(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))], 1) if samples else 0.0

    return {
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
        "samples": len(samples),
        "rate": rate,
        "tally_interval_ms": config.tally_interval_ms,
    }


def _memory(config: Config, before: int) -> dict[str, float]:
    client = redis.Redis.from_url(config.redis_url.get_secret_value())
    used = int(client.info("memory")["used_memory"]) - before
    store = RedisStore.from_url(config.redis_url.get_secret_value(), Keys(config.redis_prefix), 0)
    touches, keys = 0, [k.decode() for k in client.scan_iter(f"{config.redis_prefix}:u:*", count=2000)]
    for i in range(0, len(keys), 2000):
        for blob, _ in store.load(keys[i : i + 2000], []).users.values():
            touches += len(decode_state(blob).touches)
    store.close()
    client.close()
    return {
        "used_memory_delta_bytes": used,
        "live_touches": touches,
        "bytes_per_touch": round(used / touches, 1) if touches else 0.0,
    }


def run_bench(
    scale: float,
    latency_rate: int,
    latency_s: float,
    naive_events: int,
    out: Path,
    rss: tuple[float, int, bool] = (0, 0, False),
    runtime_rate: int = 2_000,
) -> dict[str, Any]:
    rss_seconds, rss_rate, rss_only = rss
    with services() as env:
        os.environ.update(env)
        base = load_config().model_copy(update={"session_timeout_ms": 6000, "partitions": 4})
        if rss_only:
            only = worker_rss(_fresh(base), rss_rate, rss_seconds)
            out.write_bytes(orjson.dumps({"worker_rss": only}, option=orjson.OPT_INDENT_2))
            print(render_rss(only))  # noqa: T201 - the bench's output is the table
            return {"worker_rss": only}
        shape = Shape().scaled(scale)
        now = int(time.time() * 1000)
        records = backlog(shape, now - 6 * 3600_000, 4 * 3600_000)
        total = len(records)
        config = _fresh(base)
        produce_s = _produce(config, records)
        client = redis.Redis.from_url(config.redis_url.get_secret_value())
        before = int(client.info("memory")["used_memory"])
        client.close()
        res: dict[str, Any] = {
            "shape": shape.__dict__,
            "events": total,
            "produce_events_per_s": total / produce_s,
        }
        res["ceiling_consume_parse"] = _ceiling(config, total, produce=False)
        res["ceiling_consume_parse_produce"] = _ceiling(config, total, produce=True)
        res["engine"] = _engine(config, total)
        res["memory"] = _memory(config, before)
        res["identities"] = _identity_cost(base, shape, now)
        res["naive_events_per_s"] = _naive(config, records[:naive_events])
        # the embedded broker holds each fetch for the full fetch.wait.max.ms (Kafka answers when data
        # arrives): measure the engine with a short wait, and say so in the table
        preset = "KAFKA_FETCH_WAIT_MAX_MS" in os.environ  # an operator's own value wins
        wait_ms = int(os.environ.setdefault("KAFKA_FETCH_WAIT_MAX_MS", str(LATENCY_FETCH_WAIT_MS)))
        try:
            res["latency"] = _latency(_fresh(base, tally_interval_ms=20), latency_rate, latency_s)
            if runtime_rate:  # a quarter of the backlog, and a load the Faust runtime keeps up with
                res["runtimes"] = side_by_side(
                    lambda **extra: _fresh(base, **extra),
                    records[: max(1, total // 4)],
                    _produce,
                    _caught_up,
                    lambda config, start: _latency(config, runtime_rate, latency_s, start),
                )
        finally:
            if not preset:
                os.environ.pop("KAFKA_FETCH_WAIT_MAX_MS")
        res["latency"]["fetch_wait_ms"] = wait_ms
        if rss_seconds:
            res["worker_rss"] = worker_rss(_fresh(base), rss_rate, rss_seconds)
        eng = res["engine"]["events_per_s"]
        res["ratios"] = {
            "engine_over_ceiling": eng / res["ceiling_consume_parse"],
            "engine_over_naive": eng / res["naive_events_per_s"],
        }
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(render(res))  # noqa: T201 - the bench's output is the table
    if "worker_rss" in res:
        print(render_rss(res["worker_rss"]))  # noqa: T201
    return res


def render_rss(r: dict[str, Any]) -> str:
    return (
        f"worker RSS over {r['seconds']} s @ {r['rate']}/s ({r['events']:,} events): "
        f"{r['rss_after_warmup_mib']} MiB after warm-up, {r['rss_end_mib']} MiB at the end, "
        f"max {r['rss_max_mib']} MiB; second-half slope {r['second_half_slope_mib_per_min']} MiB/min; "
        f"lag max {r['max_lag_records']:,} records, {r['end_lag_records']:,} at the end"
    )


def render(r: dict[str, Any]) -> str:
    e, lat, mem, ids = r["engine"], r["latency"], r["memory"], r["identities"]
    rows = [
        ("backlog events", f"{r['events']:,}"),
        ("ceiling: consume + parse", f"{r['ceiling_consume_parse']:,.0f} ev/s"),
        ("ceiling: consume + parse + produce", f"{r['ceiling_consume_parse_produce']:,.0f} ev/s"),
        ("engine catch-up", f"{e['events_per_s']:,.0f} ev/s ({e['seconds']:.1f} s)"),
        ("  stages (s)", ", ".join(f"{k} {v}" for k, v in sorted(e["stage_seconds"].items()))),
        ("naive (2 round trips per event)", f"{r['naive_events_per_s']:,.0f} ev/s"),
        (
            "identity backlog: identities off / on",
            f"{ids['off']['events_per_s']:,.0f} / {ids['on']['events_per_s']:,.0f} ev/s "
            f"({ids['events']:,} events, {ids['identity_records']:,} identity records): "
            f"on / off {ids['on_over_off']:.2f}",
        ),
        (
            f"latency goal->tally @ {lat['rate']}/s",
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"max {lat['max_ms']} ms ({lat['samples']} tallies, interval {lat['tally_interval_ms']} ms, "
            f"fetch wait {lat.get('fetch_wait_ms', 100)} ms)",
        ),
        ("redis memory per live touch", f"{mem['bytes_per_touch']} B ({mem['live_touches']:,} touches)"),
        *(runtime_rows(r["runtimes"]) if "runtimes" in r else []),
        ("engine / ceiling", f"{r['ratios']['engine_over_ceiling']:.2f}"),
        ("engine / naive", f"{r['ratios']['engine_over_naive']:.1f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
