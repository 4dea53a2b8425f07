"""The bench's round-2 pieces that need no server: /proc parsing, the CPU accounting, the verdicts."""

from __future__ import annotations

import os
from typing import Any

import pytest

from attribution.devkit.bench import build, render_round2, round2
from attribution.devkit.bench_load import Shape, backlog, by_event_time
from attribution.devkit.bench_rss import status_kib
from attribution.devkit.bench_scale import (
    account,
    busy_ticks,
    cpu_seconds,
    render_users,
    spread,
    stat_cpu_ticks,
    table,
)

STAT = "4242 (tansu) broker) S 1 4242 4242 0 -1 4194560 2140 0 0 0 1500 250 7 3 20 0 9 0 100 0 0"


def test_stat_fields_are_read_after_the_last_parenthesis() -> None:
    assert stat_cpu_ticks(STAT) == 1500 + 250


def test_busy_ticks_leave_out_idle_and_iowait() -> None:
    text = "cpu  100 5 40 9000 60 2 3 1 0 0\ncpu0 50 2 20 4500 30 1 1 0 0 0\n"
    assert busy_ticks(text) == 100 + 5 + 40 + 2 + 3 + 1


def test_this_process_has_cpu_time_and_a_peak_rss() -> None:
    assert (cpu_seconds(os.getpid()) or 0) > 0
    assert (status_kib(os.getpid(), "VmHWM") or 0) > 1024
    assert status_kib(os.getpid(), "NoSuchField") is None


def test_the_cores_are_accounted_for() -> None:
    cpu = account({"worker 1": 9.0, "broker (tansu)": 4.0}, wall_s=10.0, cores=2, machine_busy_s=15.0)
    assert cpu["capacity_cpu_s"] == 20.0
    assert cpu["other_processes_cpu_s"] == 2.0
    assert cpu["idle_cpu_s"] == 5.0
    assert cpu["busy_share"] == 0.75


def test_spread_is_zero_when_flat() -> None:
    assert spread([100.0, 100.0, 100.0]) == 0.0
    assert spread([100.0, 80.0, 90.0]) == pytest.approx(0.2)
    assert spread([]) == 0.0


def test_table_pads_columns() -> None:
    lines = table([("a", "bb"), ("ccc", "d")]).splitlines()
    assert lines == ["| a   | bb |", "|-----|----|", "| ccc | d  |"]


def test_the_users_curve_keeps_its_event_count_and_campaigns() -> None:
    shape = Shape().with_events(12_100, 1_000_000)
    assert shape.users == 1_000_000 and shape.campaigns == 50
    records = by_event_time(backlog(shape, 0, 3600_000))
    assert abs(len(records) - 12_100) <= 3
    assert {kind for kind, _, _ in records[:2000]} >= {"sends"}


def _result(**extra: Any) -> dict[str, Any]:
    touch = {"server": "valkey 8.0.2", "bytes_per_touch": 70.0}
    return {
        "build": build(),
        "engine": {"events_per_s": 50_000.0},
        "ceiling_consume_parse": 100_000.0,
        "ratios": {"engine_over_ceiling": 0.5},
        "latency": {"rate": 20_000, "p99_ms": 120.0, "p50_ms": 40.0},
        "memory_servers": {"valkey": touch, "redis": {**touch, "server": "redis 7.0.15"}},
        **extra,
    }


def test_round2_rows_say_which_of_bar_and_goal_were_met() -> None:
    rows = {row["measure"]: row for row in round2(_result())}
    assert rows["catch-up / consume+parse ceiling (sparse backlog, same run)"]["met"] == "bar"
    assert rows["p99 goal -> tally at 20,000 events/s"]["met"] == "bar"
    assert rows["Redis bytes per live touch, valkey 8 and Redis 7.0"]["met"] == "bar"
    assert rows["2 workers vs 1 on the same backlog"]["met"] == "no"
    assert rows["catch-up at 10k, 100k and 1M users"]["result"] == "not run (--no-users)"


def test_round2_with_scale_out_users_and_a_missing_server() -> None:
    cpu = account({"worker 1": 9.0}, 10.0, 2, 19.0)
    points = [
        {"users": n, "events": 300_000, "events_per_s": rate, "bytes_per_touch": 70.0, "live_touches": 9}
        | {"rss_peak_mib": 200.0, "rss_end_mib": 180.0, "worker_cpu_share": 0.9}
        for n, rate in ((10_000, 30_000.0), (100_000, 29_000.0), (1_000_000, 28_000.0))
    ]
    result = _result(
        scale_out={
            "workers": 2,
            "cores": 2,
            "ratio": 1.3,
            "one": {"events_per_s": 20_000.0},
            "many": {"events_per_s": 26_000.0, "cpu": cpu},
        },
        users_curve={"events": 300_000, "points": points, "spread": spread([30_000, 29_000, 28_000])},
    )
    result["memory_servers"]["redis"] = {"missing": "redis-server is not installed"}
    result["round2"] = round2(result)
    rows = {row["measure"]: row for row in result["round2"]}
    assert rows["2 workers vs 1 on the same backlog"]["met"] == "bar"
    assert "busy 95% of 2 cores" in rows["2 workers vs 1 on the same backlog"]["result"]
    assert rows["catch-up at 10k, 100k and 1M users"]["met"] == "goal"
    assert rows["catch-up at 10k, 100k and 1M users"]["result"].startswith("10k: 30,000, 100k: 29,000, 1M: ")
    assert rows["Redis bytes per live touch, valkey 8 and Redis 7.0"]["met"] == "n/a (a server missing)"
    text = render_round2(result)
    assert "redis-server is not installed" in text and f"build: {result['build']}" in text
    assert "1,000,000" in render_users(result["users_curve"])
