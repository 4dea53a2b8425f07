"""``attribution bench`` / ``make bench``: throughput, latency and memory, measured in one run.

Prints a table and writes ``bench-results.json``. Every figure comes from this run on this machine,
so compare ratios (engine / ceiling, engine / naive) across runs, not absolutes.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from attribution.core.rules import SettingsBook, parse_settings
from attribution.devkit.bench_latency import latency
from attribution.devkit.bench_latency import render as latency_rows
from attribution.devkit.bench_links import identity_backlog
from attribution.devkit.bench_load import SETTINGS, Shape, backlog, ceiling, fresh, produce
from attribution.devkit.bench_memory import by_servers, touch_memory, used_memory
from attribution.devkit.bench_memory import render as memory_rows
from attribution.devkit.bench_rss import lag, worker_rss
from attribution.devkit.bench_runtimes import render as runtime_rows
from attribution.devkit.bench_runtimes import side_by_side
from attribution.devkit.bench_scale import (
    render_scale,
    render_users,
    scale_out,
    server_pids,
    table,
    users_curve,
)
from attribution.devkit.demo import services
from attribution.engine.processor import EngineConfig, Processor, Record
from attribution.infra.config import Config, load_config
from attribution.runtime.telemetry import pace_gc
from attribution.runtime.worker import Worker
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

LATENCY_FETCH_WAIT_MS = 10


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
        config = fresh(base, identities=on)
        produce(config, records)
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
        store, keys, SettingsBook([parse_settings(SETTINGS)]), EngineConfig(config.grace_ms, cache_bytes=0)
    )
    started = time.perf_counter()
    for offset, (kind, key, value) in enumerate(records):
        processor.process([Record(kind, kind, 0, offset, key, value)])
    return len(records) / (time.perf_counter() - started)


def run_bench(
    scale: float,
    latency_rate: int,
    latency_s: float,
    naive_events: int,
    out: Path,
    rss: tuple[float, int, bool] = (0, 0, False),
    runtime_rate: int = 2_000,
    workers: int = 0,
    users_events: int = 0,
) -> dict[str, Any]:
    """The whole bench; ``workers`` >= 2 adds the scale-out catch-up, ``users_events`` > 0 the catch-up
    at 10k / 100k / 1M users with that many events each."""
    rss_seconds, rss_rate, rss_only = rss
    pace_gc()  # the in-process workers pace the collector as `attribution worker` does
    with services() as env:
        os.environ.update(env)
        base = load_config().model_copy(update={"session_timeout_ms": 6000, "partitions": 4})
        if rss_only:
            only = worker_rss(fresh(base), rss_rate, rss_seconds)
            out.write_bytes(orjson.dumps({"worker_rss": only}, option=orjson.OPT_INDENT_2))
            print(render_rss(only))  # noqa: T201 - the bench's output is the table
            return {"worker_rss": only}
        shape = Shape().scaled(scale)
        now = int(time.time() * 1000)
        records = backlog(shape, now - 6 * 3600_000, 4 * 3600_000)
        total = len(records)
        config = fresh(base)
        produce_s = produce(config, records)
        before = used_memory(config.redis_url.get_secret_value())
        res: dict[str, Any] = {
            "build": build(),
            "shape": shape.__dict__,
            "events": total,
            "produce_events_per_s": total / produce_s,
        }
        res["ceiling_consume_parse"] = ceiling(config, total, and_produce=False)
        res["ceiling_consume_parse_produce"] = ceiling(config, total, and_produce=True)
        res["engine"] = _engine(config, total)
        res["memory"] = touch_memory(config.redis_url.get_secret_value(), config.redis_prefix, before)
        res["memory_servers"] = by_servers(records, config.grace_ms, config.partitions)
        res["identities"] = _identity_cost(base, shape, now)
        res["naive_events_per_s"] = _naive(config, records[:naive_events])
        # the embedded broker holds each fetch for the full fetch.wait.max.ms (Kafka answers when data
        # arrives): measure the engine with a short wait, and say so in the table
        preset = "KAFKA_FETCH_WAIT_MAX_MS" in os.environ  # an operator's own value wins
        wait_ms = int(os.environ.setdefault("KAFKA_FETCH_WAIT_MAX_MS", str(LATENCY_FETCH_WAIT_MS)))
        try:
            res["latency"] = latency(fresh(base, tally_interval_ms=20), latency_rate, latency_s)
            if runtime_rate:  # a quarter of the backlog, and a load the Faust runtime keeps up with
                res["runtimes"] = side_by_side(
                    lambda **extra: fresh(base, **extra),
                    records[: max(1, total // 4)],
                    produce,
                    _caught_up,
                    lambda config, start: latency(config, runtime_rate, latency_s, start),
                )
        finally:
            if not preset:
                os.environ.pop("KAFKA_FETCH_WAIT_MAX_MS")
        res["latency"]["fetch_wait_ms"] = wait_ms
        again, pids = (lambda **extra: fresh(base, **extra)), server_pids(os.environ)
        if workers >= 2:
            res["scale_out"] = scale_out(again, records, workers, pids)
        if users_events:
            res["users_curve"] = users_curve(again, users_events, pids)
        if rss_seconds:
            res["worker_rss"] = worker_rss(fresh(base), rss_rate, rss_seconds)
        eng = res["engine"]["events_per_s"]
        res["ratios"] = {
            "engine_over_ceiling": eng / res["ceiling_consume_parse"],
            "engine_over_naive": eng / res["naive_events_per_s"],
        }
        res["round2"] = round2(res)
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(render(res))  # noqa: T201 - the bench's output is the table
    if "worker_rss" in res:
        print(render_rss(res["worker_rss"]))  # noqa: T201
    return res


def build() -> str:
    """Which build of the package ran: compiled (mypyc) or pure Python, as ``attribution.compiled``
    says; "unknown" where the package does not say."""
    try:
        return str(importlib.import_module("attribution.compiled").BUILD)
    except (ImportError, AttributeError):
        return "unknown"


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _met(goal: bool, bar: bool) -> str:
    return "goal" if goal else "bar" if bar else "no"


def round2(r: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's five measures of performance round 2, each with its bar, its goal and which it met."""
    eng, ratio, lat = r["engine"]["events_per_s"], r["ratios"]["engine_over_ceiling"], r["latency"]
    servers = [r["memory_servers"][flavour] for flavour in ("valkey", "redis")]
    worst = max((x.get("bytes_per_touch", 0.0) for x in servers), default=0.0)
    so = r.get("scale_out")
    scaled = (
        (
            f"{so['ratio']:.2f}x ({so['many']['events_per_s']:,.0f} / {so['one']['events_per_s']:,.0f} "
            f"ev/s); machine busy {so['many']['cpu']['busy_share']:.0%} of {so['cores']} cores",
            _met(so["ratio"] >= 1.7, True),
        )
        if so
        else ("not run (--workers 0)", "no")
    )
    uc = r.get("users_curve")
    curve = (
        (
            ", ".join(f"{_count(p['users'])}: {p['events_per_s']:,.0f}" for p in uc["points"])
            + f" ev/s; spread {uc['spread']:.0%}",
            _met(uc["spread"] <= 0.1, uc["spread"] <= 0.25),
        )
        if uc
        else ("not run (--no-users)", "no")
    )
    rows = [
        (
            "catch-up / consume+parse ceiling (sparse backlog, same run)",
            f"{ratio:.2f} ({eng:,.0f} / {r['ceiling_consume_parse']:,.0f} ev/s)",
            ">= 0.4",
            ">= 0.75 (>= 100k ev/s per process)",
            _met(ratio >= 0.75 and eng >= 100_000, ratio >= 0.4),
        ),
        (
            f"p99 goal -> tally at {lat['rate']:,} events/s",
            f"{lat['p99_ms']} ms (p50 {lat['p50_ms']} ms)",
            "<= 150 ms",
            "<= 100 ms",
            _met(lat["p99_ms"] <= 100, lat["p99_ms"] <= 150) if lat["rate"] >= 20_000 else "n/a (rate)",
        ),
        (
            "Redis bytes per live touch, valkey 8 and Redis 7.0",
            "; ".join(x.get("missing") or f"{x['server']}: {x['bytes_per_touch']} B" for x in servers),
            "<= 80 B",
            "<= 64 B",
            "n/a (a server missing)"
            if any("missing" in x for x in servers)
            else _met(worst <= 64, worst <= 80),
        ),
        (
            f"{so['workers'] if so else 2} workers vs 1 on the same backlog",
            scaled[0],
            "measured and explained",
            ">= 1.7x where cores allow",
            scaled[1],
        ),
        ("catch-up at 10k, 100k and 1M users", curve[0], "flat within 25 %", "flat (within 10 %)", curve[1]),
    ]
    return [dict(zip(("measure", "result", "bar", "goal", "met"), row, strict=True)) for row in rows]


def render_round2(r: dict[str, Any]) -> str:
    head = ("measure", "result", "bar", "goal", "met?")
    lines = [head, *((x["measure"], x["result"], x["bar"], x["goal"], x["met"]) for x in r["round2"])]
    return f"performance round 2 (build: {r['build']}):\n" + table(lines)


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
        *latency_rows(lat),
        ("redis memory per live touch", f"{mem['bytes_per_touch']} B ({mem['live_touches']:,} touches)"),
        *(runtime_rows(r["runtimes"]) if "runtimes" in r else []),
        *memory_rows(r["memory_servers"]),
        *(render_scale(r["scale_out"]) if "scale_out" in r else []),
        ("engine / ceiling", f"{r['ratios']['engine_over_ceiling']:.2f}"),
        ("engine / naive", f"{r['ratios']['engine_over_naive']:.1f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    if "users_curve" in r:
        text += "\n\n" + render_users(r["users_curve"])
    return text + "\n\n" + render_round2(r)
