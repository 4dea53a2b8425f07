"""Both runtimes side by side in ``make bench``: `attribution worker --runtime confluent|faust` as a
child process each, on the same backlog and the same steady load, so a user sees what Faust costs.

Per runtime: the catch-up rate of the backlog (timed from the group join, reported by /readyz, to
the group's committed offsets reaching the end), the worker's peak RSS during it, and the goal ->
tally latency under the steady load (the same measurement as the in-process one of ``bench``).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attribution.contract.topics import INPUTS
from attribution.devkit.bench_rss import child_env, rss_bytes
from attribution.devkit.embedded import free_port
from attribution.infra.config import Config

RUNTIMES = ("confluent", "faust")
MIB = 1024 * 1024


class WorkerProcess:
    """`attribution worker --runtime <runtime>`; ``start`` returns once it has joined its group."""

    def __init__(self, config: Config, runtime: str) -> None:
        self.port = free_port()
        env = {**child_env(config), "ATTRIBUTION_METRICS_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attribution.cli", "worker", "--runtime", runtime], env=env
        )
        self.rss_max = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not join its group")
            time.sleep(0.05)
        self._sampler.start()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            try:
                self.rss_max = max(self.rss_max, rss_bytes(self.proc.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def started(config: Config, runtime: str) -> Callable[[], None]:
    """A worker process of ``runtime`` that has joined its group; returns the way to stop it."""
    process = WorkerProcess(config, runtime)
    process.start()
    return process.stop


def side_by_side(
    fresh: Callable[..., Config],
    records: list[tuple[str, bytes, bytes]],
    produce: Callable[[Config, list[tuple[str, bytes, bytes]]], float],
    caught_up: Callable[[Config], None],
    latency: Callable[[Config, Callable[[Config], Callable[[], None]]], dict[str, Any]],
) -> dict[str, Any]:
    """Catch-up, RSS and latency of each runtime (``fresh`` gives an engine of its own each time)."""
    out: dict[str, Any] = {}
    for runtime in RUNTIMES:
        config = fresh()
        produce(config, records)
        worker = WorkerProcess(config, runtime)
        try:
            worker.start()
            began = time.perf_counter()
            caught_up(config)
            seconds = time.perf_counter() - began
        finally:
            worker.stop()
        row: dict[str, Any] = {
            "events_per_s": len(records) / seconds,
            "seconds": seconds,
            "rss_max_mib": round(worker.rss_max / MIB, 1),
        }

        row["latency"] = latency(fresh(tally_interval_ms=20), functools.partial(started, runtime=runtime))
        out[runtime] = row
    out["faust_over_confluent"] = out["faust"]["events_per_s"] / out["confluent"]["events_per_s"]
    config = fresh()
    produce(config, records)
    out["faust_noop_events_per_s"] = faust_ceiling(config, len(records))
    out["events"] = len(records)
    return out


def faust_ceiling(config: Config, records: int) -> float:
    """Records/s of a Faust agent that does nothing with them (``attribution.devkit.faust_ceiling``)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rate"
        env = {
            **child_env(config),
            "CEILING_TOPICS": ",".join(config.topic(kind) for kind in INPUTS),
            "CEILING_RECORDS": str(records),
            "CEILING_OUT": str(result),
        }
        subprocess.run(
            [sys.executable, "-m", "attribution.devkit.faust_ceiling", "--quiet", "worker", "-l", "warn"],
            env=env,
            timeout=1800,
            check=False,
        )
        return float(result.read_text()) if result.exists() else 0.0


def render(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("runtimes: backlog (worker processes)", f"{r['events']:,} events")]
    for runtime in RUNTIMES:
        x = r[runtime]
        lat = x["latency"]
        rows.append(
            (
                f"runtime {runtime} (a worker process)",
                f"catch-up {x['events_per_s']:,.0f} ev/s, RSS max {x['rss_max_mib']} MiB; "
                f"goal->tally @ {lat['rate']}/s p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms",
            )
        )
    rows.append(("faust / confluent catch-up", f"{r['faust_over_confluent']:.2f}"))
    rows.append(("faust no-op agent (its ceiling)", f"{r['faust_noop_events_per_s']:,.0f} ev/s"))
    return rows
