"""``attribution bench --rss-seconds N`` / ``make bench-rss``: is a worker's memory flat under load?

Runs ``attribution worker`` as a child process under steady demo-like traffic (many users, every
channel, goals and purchases) and samples its resident set size from ``/proc``. Reports the RSS after
warm-up and at the end, and the growth rate over the second half of the run (a least-squares slope),
which is what "flat" means: a leak shows as a steady slope; a full cache or allocator arena does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from attribution.contract.topics import INPUTS
from attribution.devkit.traffic import Traffic
from attribution.infra.config import Config

SAMPLE_EVERY_S = 5.0


def status_kib(pid: int, field: str) -> int | None:
    """A ``/proc/<pid>/status`` size in KiB (VmRSS, VmHWM), None when absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux)."""
    kib = status_kib(pid, "VmRSS")
    if kib is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return kib * 1024


def slope_per_minute(samples: Sequence[tuple[float, int]]) -> float:
    """Least-squares growth of RSS in bytes per minute over ``samples`` of (seconds, bytes)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if not var:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


def lag(probe: Consumer, config: Config) -> int:
    """Records of the input topics not yet committed by the worker's group (its backlog)."""
    tps = [TopicPartition(config.topic(k), p) for k in INPUTS for p in range(config.partitions)]
    total = 0
    for c, tp in zip(probe.committed(tps, timeout=10), tps, strict=True):
        high = probe.get_watermark_offsets(tp, timeout=10)[1]
        total += max(0, high - max(c.offset, 0))
    return total


def child_env(config: Config) -> dict[str, str]:
    """The environment of an `attribution` child process (worker, serve) for ``config``."""
    return {
        **os.environ,
        "ATTRIBUTION_TOPIC_PREFIX": config.topic_prefix,
        "ATTRIBUTION_GROUP_ID": config.group_id,
        "ATTRIBUTION_REDIS_PREFIX": config.redis_prefix,
        "ATTRIBUTION_METRICS_PORT": "0",
        "ATTRIBUTION_SESSION_TIMEOUT_MS": str(config.session_timeout_ms),
        "ATTRIBUTION_LOG_LEVEL": "WARNING",
    }


def worker_rss(config: Config, rate: int, seconds: float, users: int = 1_000_000) -> dict[str, Any]:
    """Run a worker for ``config`` (topics and settings already in place) under ``rate`` events/s.

    A million users by default: a few events per user over the run, as in the catch-up backlog, so
    that per-user state stays realistic and the worker keeps up (the lag is sampled to show it)."""
    env = child_env(config)
    worker = subprocess.Popen([sys.executable, "-m", "attribution.cli", "worker"], env=env)
    stop = threading.Event()
    produced = [0]

    def load() -> None:
        producer = Producer(config.kafka({"linger.ms": 5}))
        traffic = Traffic(seed=3, users=users, project="bench")
        tick_s = 0.05
        while not stop.is_set():
            for kind, key, value in traffic.events(int(time.time() * 1000), int(rate * tick_s)):
                producer.produce(config.topic(kind), key=key.encode(), value=orjson.dumps(value))
                produced[0] += 1
            producer.poll(0)
            stop.wait(tick_s)
        producer.flush(30)

    loader = threading.Thread(target=load, daemon=True)
    probe = Consumer(config.kafka({"group.id": config.group_id, "enable.auto.commit": False}))
    samples: list[tuple[float, int]] = []
    lags: list[int] = []
    started = time.monotonic()
    loader.start()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode} during the memory run")
            samples.append((elapsed, rss_bytes(worker.pid)))
            lags.append(lag(probe, config))
            time.sleep(SAMPLE_EVERY_S)
    finally:
        probe.close()
        stop.set()
        loader.join(60)
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    warm = [s for s in samples if s[0] >= min(60.0, seconds / 5)] or samples
    second_half = [s for s in samples if s[0] >= seconds / 2] or samples
    mib = 1024 * 1024
    return {
        "seconds": round(seconds),
        "rate": rate,
        "events": produced[0],
        "rss_after_warmup_mib": round(warm[0][1] / mib, 1),
        "rss_end_mib": round(samples[-1][1] / mib, 1),
        "rss_max_mib": round(max(v for _, v in samples) / mib, 1),
        "second_half_slope_mib_per_min": round(slope_per_minute(second_half) / mib, 3),
        "max_lag_records": max(lags, default=0),
        "end_lag_records": lags[-1] if lags else 0,
        "samples": [(round(t, 1), round(v / mib, 1)) for t, v in samples],
    }
