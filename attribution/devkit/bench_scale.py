"""``attribution bench --workers N`` and ``--users``: does the catch-up scale out, and does it stay
flat as the users grow?

``--workers N``: one backlog caught up by one ``attribution worker`` process, then by N processes in
one consumer group (the topics have 4 partitions; each run has its own group and Redis prefix), and
the ratio. Over each catch-up the CPU time (utime + stime from ``/proc/<pid>/stat``) of every worker,
of the broker (tansu) and Redis, of this process and of the rest of the machine (``/proc/stat``),
against wall x cores: where the cores went when the ratio falls short.

``--users``: a backlog of the same size (the bench's mix of sends, clicks and goals) at 10k, 100k
and 1M users, each caught up by one worker process on its own state: events/s, Redis bytes per
live touch and the worker's peak RSS (VmHWM: its own, as it is a process of its own).

A catch-up gives no worker a head start: the workers join on empty topics and, once every one
holds its partitions, the backlog is produced in one Kafka transaction (invisible to the workers,
which read committed records only, until it commits). It is timed from that commit to the group's
committed offsets reaching the end of every input topic.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from attribution.contract.topics import INPUTS
from attribution.devkit.bench_load import Record, Shape, backlog
from attribution.devkit.bench_memory import drop_prefix, touch_memory, used_memory
from attribution.devkit.bench_rss import status_kib
from attribution.devkit.bench_runtimes import WorkerProcess
from attribution.infra.config import Config

USERS = (10_000, 100_000, 1_000_000)
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.1
Fresh = Callable[..., Config]


# --- /proc -------------------------------------------------------------------------------------


def stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks, every thread) from the text of ``/proc/<pid>/stat``.

    The command (field 2) is in parentheses and may itself hold spaces and ')': split after the last."""
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5); fields[0] is field 3


def busy_ticks(text: str) -> int:
    """Busy clock ticks of all CPUs from the text of ``/proc/stat``: everything but idle and iowait
    (guest time is already inside user time)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, text.split("\n", 1)[0].split()[1:9])
    return user + nice + system + irq + softirq + steal


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds ``pid`` has used so far, None once it is gone."""
    try:
        return stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def find_process(binaries: Sequence[str], port: int) -> tuple[int, str] | None:
    """(pid, binary) of a local process of one of ``binaries`` whose command line names ``port``."""
    mine = re.compile(rf":{port}\b")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        if words and (name := Path(words[0]).name) in binaries and mine.search(" ".join(words)):
            return int(entry.name), name
    return None


def server_pids(env: Mapping[str, str]) -> dict[str, int]:
    """The broker's and Redis's pids when they run on this machine (embedded or local), by name."""
    found: dict[str, int] = {}
    kafka_port = env.get("KAFKA_BOOTSTRAP_SERVERS", "").split(",")[0].rpartition(":")[2]
    redis_port = urlsplit(env.get("REDIS_URL", "")).port
    if kafka_port.isdigit() and (hit := find_process(("tansu",), int(kafka_port))):
        found[f"broker ({hit[1]})"] = hit[0]
    if redis_port and (hit := find_process(("valkey-server", "redis-server"), redis_port)):
        found[f"redis ({hit[1]})"] = hit[0]
    return found


def account(used: Mapping[str, float], wall_s: float, cores: int, machine_busy_s: float) -> dict[str, Any]:
    """Where the cores went: CPU-seconds per component, the rest of the machine, and idle, out of
    ``wall_s`` x ``cores``."""
    capacity = wall_s * cores
    components = sum(used.values())
    return {
        "wall_s": round(wall_s, 2),
        "cores": cores,
        "capacity_cpu_s": round(capacity, 2),
        "components_cpu_s": {name: round(s, 2) for name, s in used.items()},
        "components_total_cpu_s": round(components, 2),
        "other_processes_cpu_s": round(max(0.0, machine_busy_s - components), 2),
        "idle_cpu_s": round(max(0.0, capacity - machine_busy_s), 2),
        "busy_share": round(machine_busy_s / capacity, 3) if capacity else 0.0,
    }


def _machine_busy_s() -> float:
    return busy_ticks(Path("/proc/stat").read_text()) / CLK_TCK


class CpuMeter:
    """CPU seconds of named processes and of the whole machine, from construction to ``read``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._machine = _machine_busy_s()
        self._wall = time.perf_counter()

    def read(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_s() - self._machine
        used = {}
        for name, pid in self.pids.items():
            start, end = self._start[name], cpu_seconds(pid)
            if start is not None and end is not None:
                used[name] = end - start
        return account(used, wall, os.cpu_count() or 1, busy)


# --- catch-up by worker processes ----------------------------------------------------------------


def _assigned(worker: WorkerProcess) -> int | None:
    """The worker's assigned input partitions, None while it is not ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/readyz", timeout=1) as r:
            return int(orjson.loads(r.read()).get("assigned_partitions", 0))
    except OSError:
        return None


def _settled(workers: list[WorkerProcess], partitions: int, expected: int | None) -> int:
    """Wait until the group has settled: every worker ready, as many holding partitions as can, and
    (when known) every input partition owned. Returns the partitions owned."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        counts = [_assigned(w) for w in workers]
        owned = [c for c in counts if c is not None]
        holding = sum(1 for c in owned if c > 0)
        everyone = len(owned) == len(workers) and holding == min(len(workers), partitions)
        if everyone and (expected is None or sum(owned) == expected):
            return sum(owned)
        time.sleep(POLL_S)
    raise TimeoutError("the workers' group did not settle in 120 s")


def ends(probe: Consumer, config: Config) -> dict[tuple[str, int], tuple[int, int]]:
    """(committed offset, high watermark) of every input partition for ``probe``'s group."""
    tps = [TopicPartition(config.topic(k), p) for k in INPUTS for p in range(config.partitions)]
    committed = probe.committed(tps, timeout=10)
    return {
        (tp.topic, tp.partition): (max(c.offset, 0), probe.get_watermark_offsets(tp, timeout=10)[1])
        for c, tp in zip(committed, tps, strict=True)
    }


def _hidden(config: Config, records: list[Record]) -> Producer:
    """``records`` produced in an open transaction: the caller commits it to show them at once."""
    producer = Producer(
        config.kafka(
            {
                "transactional.id": f"bench-{uuid.uuid4().hex}",
                "transaction.timeout.ms": 600_000,
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i, (kind, key, value) in enumerate(records):
        producer.produce(config.topic(kind), key=key, value=value)
        if i % 20_000 == 0:
            producer.poll(0)
    producer.flush(300)
    return producer


def catch_up(
    config: Config, records: list[Record], workers: int, pids: Mapping[str, int], expected: int | None = None
) -> dict[str, Any]:
    """``records`` caught up by ``workers`` worker processes in one group (``config``'s topics empty,
    its group and prefix fresh), with the CPU accounting of the catch-up."""
    procs = [WorkerProcess(config, "confluent") for _ in range(workers)]  # they boot side by side
    probe = Consumer(config.kafka({"group.id": config.group_id, "enable.auto.commit": False}))
    try:
        for proc in procs:
            proc.start()
        assigned = _settled(procs, config.partitions, expected)
        _hidden(config, records).commit_transaction(60)
        # a transaction's commit marker takes an offset after its records: no consumer commits it
        markers = {tp: 1 for tp, high in ends(probe, config).items() if high[1] > 0}
        remaining = len(records)
        names = {f"worker {i + 1}": p.proc.pid for i, p in enumerate(procs)}
        meter = CpuMeter({**names, **pids, "bench (this process)": os.getpid()})
        deadline = time.monotonic() + 1800
        while any(high - done > markers.get(tp, 0) for tp, (done, high) in ends(probe, config).items()):
            if any(p.proc.poll() is not None for p in procs):
                raise RuntimeError("a worker exited during the catch-up")
            if time.monotonic() > deadline:
                raise TimeoutError("the workers did not catch up in 30 min")
            time.sleep(POLL_S)
        cpu = meter.read()
        peak = [status_kib(p.proc.pid, "VmHWM") or 0 for p in procs]
        end = [status_kib(p.proc.pid, "VmRSS") or 0 for p in procs]
    finally:
        probe.close()
        for proc in procs:
            proc.stop()
    seconds = cpu["wall_s"]
    return {
        "workers": workers,
        "events": remaining,
        "seconds": seconds,
        "events_per_s": remaining / seconds if seconds else 0.0,
        "assigned_partitions": assigned,
        "rss_peak_mib": [round(k / 1024, 1) for k in peak],
        "rss_end_mib": [round(k / 1024, 1) for k in end],
        "cpu": cpu,
    }


def scale_out(fresh: Fresh, records: list[Record], workers: int, pids: Mapping[str, int]) -> dict[str, Any]:
    """The same backlog caught up by one worker process, then by ``workers`` in one group."""
    runs: list[dict[str, Any]] = []
    for n in (1, workers):
        config = fresh()
        runs.append(catch_up(config, records, n, pids, runs[0]["assigned_partitions"] if runs else None))
        drop_prefix(config.redis_url.get_secret_value(), config.redis_prefix)
    one, many = runs
    return {
        "events": len(records),
        "partitions": config.partitions,
        "cores": os.cpu_count() or 1,
        "workers": workers,
        "one": one,
        "many": many,
        "ratio": many["events_per_s"] / one["events_per_s"] if one["events_per_s"] else 0.0,
    }


def users_curve(
    fresh: Fresh, events: int, pids: Mapping[str, int], users: Sequence[int] = USERS
) -> dict[str, Any]:
    """A backlog of ``events`` events at each user count, caught up by one worker process each."""
    now = int(time.time() * 1000)
    points = []
    for n in users:
        began = time.perf_counter()
        records = backlog(Shape().with_events(events, n), now - 6 * 3600_000, 4 * 3600_000)
        generated_s = time.perf_counter() - began
        config = fresh()
        url = config.redis_url.get_secret_value()
        before = used_memory(url)
        run = catch_up(config, records, 1, pids)
        memory = touch_memory(url, config.redis_prefix, before)
        drop_prefix(url, config.redis_prefix)
        points.append(
            {
                "users": n,
                "events": len(records),
                "backlog_seconds": round(generated_s, 2),
                "events_per_s": run["events_per_s"],
                "seconds": run["seconds"],
                "bytes_per_touch": memory["bytes_per_touch"],
                "live_touches": memory["live_touches"],
                "users_in_state": memory["users"],
                "rss_peak_mib": run["rss_peak_mib"][0],
                "rss_end_mib": run["rss_end_mib"][0],
                "worker_cpu_share": round(
                    run["cpu"]["components_cpu_s"].get("worker 1", 0.0) / run["seconds"], 2
                )
                if run["seconds"]
                else 0.0,
            }
        )
    return {"events": events, "points": points, "spread": spread([p["events_per_s"] for p in points])}


def spread(rates: Sequence[float]) -> float:
    """(max - min) / max: 0 is flat; "flat within 25 %" is <= 0.25."""
    top = max(rates, default=0.0)
    return (top - min(rates)) / top if top else 0.0


# --- the tables ----------------------------------------------------------------------------------


def cpu_line(cpu: Mapping[str, Any]) -> str:
    """``worker 1 20.1, broker (tansu) 6.0, ...; other processes 1.2, idle 3.4 of 2 x 25.0 s``."""
    parts = [f"{name} {s:.1f}" for name, s in cpu["components_cpu_s"].items()]
    parts.append(f"other processes {cpu['other_processes_cpu_s']:.1f}")
    parts.append(f"idle {cpu['idle_cpu_s']:.1f}")
    return (
        f"CPU-s: {', '.join(parts)} (of {cpu['cores']} cores x {cpu['wall_s']:.1f} s = "
        f"{cpu['capacity_cpu_s']:.1f}; busy {cpu['busy_share']:.0%})"
    )


def render_scale(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    one, many = r["one"], r["many"]
    rows = [
        (
            "scale-out: backlog",
            f"{r['events']:,} events, {r['partitions']} partitions, {r['cores']} cores (broker and "
            "Redis on them too)",
        )
    ]
    for run in (one, many):
        label = f"catch-up, {run['workers']} worker process{'es' if run['workers'] > 1 else ''}"
        rows.append(
            (
                label,
                f"{run['events_per_s']:,.0f} ev/s ({run['events']:,} events in {run['seconds']:.1f} s; "
                f"RSS peak {', '.join(f'{m} MiB' for m in run['rss_peak_mib'])})",
            )
        )
        rows.append(("  where the cores went", cpu_line(run["cpu"])))
    rows.append((f"{r['workers']} workers / 1", f"{r['ratio']:.2f}x"))
    return rows


def render_users(r: Mapping[str, Any]) -> str:
    head = ("users", "events", "catch-up", "Redis B per touch", "worker RSS peak / end", "worker CPU")
    lines = [head]
    for p in r["points"]:
        lines.append(
            (
                f"{p['users']:,}",
                f"{p['events']:,}",
                f"{p['events_per_s']:,.0f} ev/s",
                f"{p['bytes_per_touch']} B ({p['live_touches']:,} touches)",
                f"{p['rss_peak_mib']} / {p['rss_end_mib']} MiB",
                f"{p['worker_cpu_share']:.0%} of a core",
            )
        )
    return f"catch-up by users (one worker process, a fresh state each; spread {r['spread']:.0%}):\n" + table(
        lines
    )


def table(lines: Sequence[Sequence[str]]) -> str:
    """A Markdown table (its first line the header), columns padded to their widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
