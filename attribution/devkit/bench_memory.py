"""Redis bytes per live touch, and the same figure on valkey 8 and on Redis 7.0 side by side.

``touch_memory`` is the bench's measure: ``used_memory`` grown since a reading taken before the
catch-up, divided by the touches (sends and clicks still attributable) held in the users' states.
``by_servers`` runs the engine in this process (a ``Processor`` over a ``RedisStore``, 10k records a
batch, the three topics merged in event time as the worker aligns them) over the same backlog
against a fresh valkey and a fresh Debian ``redis-server`` (each on a free loopback port, no
persistence, stopped afterwards), so the two servers' allocators are compared on identical writes.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

import redis

from attribution.core.rules import SettingsBook, parse_settings
from attribution.core.state_codec import decode_state
from attribution.devkit import embedded
from attribution.devkit.bench_load import SETTINGS, Record, by_event_time
from attribution.engine.processor import EngineConfig, Processor
from attribution.engine.processor import Record as Input
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

BATCH = 10_000
SERVERS: tuple[embedded.Flavour, ...] = ("valkey", "redis")


def used_memory(url: str) -> int:
    """The server's ``used_memory`` (bytes) once its lazy frees are done (a DEL may free later)."""
    with redis.Redis.from_url(url) as client:
        deadline = time.monotonic() + 30
        while True:
            info = client.info("memory")
            if not int(info.get("lazyfree_pending_objects", 0)) or time.monotonic() > deadline:
                return int(info["used_memory"])
            time.sleep(0.05)


def server_version(url: str) -> str:
    """``valkey 8.0.2`` / ``redis 7.0.15``: valkey also reports a Redis-compatible redis_version."""
    with redis.Redis.from_url(url) as client:
        info = client.info("server")
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info['redis_version']}"


def touch_memory(url: str, prefix: str, before: int) -> dict[str, Any]:
    """Bytes of ``used_memory`` grown since ``before``, per touch held in the users under ``prefix``."""
    used = used_memory(url) - before
    store = RedisStore.from_url(url, Keys(prefix), 0)
    touches, users = 0, 0
    try:
        found = [k.decode() for k in store.client.scan_iter(f"{prefix}:u:*", count=2000)]
        for i in range(0, len(found), 2000):
            for blob, _ in store.load(found[i : i + 2000], []).users.values():
                if blob is not None:
                    touches += len(decode_state(blob).touches)
                    users += 1
    finally:
        store.close()
    return {
        "used_memory_delta_bytes": used,
        "live_touches": touches,
        "users": users,
        "bytes_per_touch": round(used / touches, 1) if touches else 0.0,
    }


def drop_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a finished bench run's state), so the next run starts lean."""
    with redis.Redis.from_url(url) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(f"{prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)


def in_process(url: str, records: Sequence[Record], grace_ms: int, partitions: int) -> dict[str, Any]:
    """The engine in this process over ``records`` (time-ordered), 10k a batch, against ``url``."""
    prefix = "benchmem"
    keys = Keys(prefix)
    store = RedisStore.from_url(url, keys, 0)
    processor = Processor(store, keys, SettingsBook([parse_settings(SETTINGS)]), EngineConfig(grace_ms))
    before = used_memory(url)
    offsets: dict[tuple[str, int], int] = {}
    started = time.perf_counter()
    try:
        for i in range(0, len(records), BATCH):
            batch = []
            for kind, key, value in records[i : i + BATCH]:
                partition = zlib.crc32(key) % partitions  # as librdkafka's consistent partitioner
                offset = offsets.get((kind, partition), 0)
                offsets[kind, partition] = offset + 1
                batch.append(Input(kind, kind, partition, offset, key, value))
            processor.process(batch)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    return {
        "server": server_version(url),
        "events_per_s": round(len(records) / seconds),
        **touch_memory(url, prefix, before),
    }


def by_servers(records: Sequence[Record], grace_ms: int, partitions: int) -> dict[str, Any]:
    """Bytes per live touch of the same in-process catch-up on a fresh valkey and a fresh Redis 7.0."""
    ordered = by_event_time(records)
    out: dict[str, Any] = {"events": len(ordered), "batch": BATCH}
    for flavour in SERVERS:
        if flavour == "redis" and embedded.redis_server_binary() is None:
            out[flavour] = {"missing": "redis-server is not installed (apt-get install redis-server)"}
            continue
        with embedded.start_redis(flavour=flavour) as server:
            out[flavour] = in_process(server.url, ordered, grace_ms, partitions)
    return out


def render(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows: one per server."""
    rows = []
    for flavour in SERVERS:
        x = r.get(flavour, {"missing": "not run"})
        if "missing" in x:
            rows.append((f"memory per touch on {flavour}", x["missing"]))
            continue
        rows.append(
            (
                f"memory per touch on {x['server']}",
                f"{x['bytes_per_touch']} B ({x['live_touches']:,} touches, {x['users']:,} users; "
                f"in-process engine {x['events_per_s']:,} ev/s, {r['events']:,} events)",
            )
        )
    return rows
