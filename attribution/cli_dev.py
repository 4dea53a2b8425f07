"""The developer's commands of ``attribution``: ``demo`` (``make run``) and ``bench`` (``make bench``).

They run the dev kit (embedded broker and Redis, traffic, benchmarks); ``attribution.cli`` registers
them on its group. Like every command, they import what they need when they run.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(epilog="`make run` runs this. Example:\n\n\b\n  attribution demo --rate 500 --duration 60")
@click.option("--rate", type=click.IntRange(1), default=300, help="Demo input events per second.")
@click.option(
    "--duration", type=click.FloatRange(0), default=0, help="Stop after this many seconds (0: Ctrl-C)."
)
@click.option("--partitions", type=click.IntRange(1), default=4, help="Partitions of the demo topics.")
def demo(rate: int, duration: float, partitions: int) -> None:
    """Embedded broker and Redis (unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set), topics,
    demo settings, a worker, demo traffic and live tallies."""
    from attribution.devkit.demo import run_demo  # noqa: PLC0415 - a light `attribution --help`

    code = run_demo(rate=rate, duration_s=duration, partitions=partitions)
    if code:
        raise click.exceptions.Exit(code)


@click.command(
    epilog="`make bench` runs this. Quick run:\n\n\b\n  attribution bench --scale 0.1 --latency-seconds 5"
)
@click.option(
    "--scale", type=click.FloatRange(0, min_open=True), default=1.0, help="Backlog size; 1.0 = 1M sends."
)
@click.option("--latency-rate", type=click.IntRange(1), default=20_000, help="Events/s of the latency load.")
@click.option(
    "--latency-seconds", type=click.FloatRange(0), default=30.0, help="Duration of the latency load."
)
@click.option("--naive-events", type=click.IntRange(1), default=20_000, help="Events of the naive baseline.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-results.json"))
@click.option(
    "--rss-seconds", type=click.FloatRange(0), default=0, help="Also sample a worker's RSS this long."
)
@click.option("--rss-rate", type=click.IntRange(1), default=2_500, help="Events/s of the RSS run.")
@click.option("--rss-only", is_flag=True, help="Only the RSS run (needs --rss-seconds).")
@click.option("--api-only", is_flag=True, help="Only the API bench: serve's latency under load.")
@click.option("--api-campaigns", type=click.IntRange(1), default=1_000, help="Campaigns of the API bench.")
@click.option("--api-clients", type=click.IntRange(1, 64), default=8, help="Concurrent API clients.")
@click.option("--api-seconds", type=click.FloatRange(1, 600), default=20.0, help="Duration of the API load.")
@click.option(
    "--runtime-rate",
    type=click.IntRange(0),
    default=2_000,
    help="Both runtimes side by side as worker processes (a quarter of the backlog, then the latency "
    "at this many events/s); 0 skips them.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    help="N >= 2: the backlog caught up by one worker process, then by N in one group: the ratio, and "
    "the CPU time of each worker, the broker and Redis over each catch-up; 0 skips it.",
)
@click.option(
    "--users/--no-users",
    default=False,
    help="The catch-up of one backlog size at 10k, 100k and 1M users (a worker process each): "
    "events/s, Redis bytes per touch, worker RSS.",
)
@click.option(
    "--users-events",
    type=click.IntRange(1),
    default=300_000,
    help="Events of each --users backlog at --scale 1 (scaled like the main backlog).",
)
def bench(
    scale: float,
    latency_rate: int,
    latency_seconds: float,
    naive_events: int,
    out: Path,
    rss_seconds: float,
    rss_rate: int,
    rss_only: bool,
    api_only: bool,
    api_campaigns: int,
    api_clients: int,
    api_seconds: float,
    runtime_rate: int,
    workers: int,
    users: bool,
    users_events: int,
) -> None:
    """Throughput, latency and memory in one run; writes bench-results.json."""
    from attribution.devkit.bench import run_bench  # noqa: PLC0415

    if api_only:
        from attribution.devkit.bench_api import run_api_bench  # noqa: PLC0415

        run_api_bench(api_campaigns, api_clients, api_seconds, out)
        return

    if rss_only and not rss_seconds:
        raise click.UsageError("--rss-only needs --rss-seconds")
    if workers == 1:
        raise click.UsageError("--workers compares N >= 2 worker processes with one (0 skips it)")
    run_bench(
        scale,
        latency_rate,
        latency_seconds,
        naive_events,
        out,
        rss=(rss_seconds, rss_rate, rss_only),
        runtime_rate=runtime_rate,
        workers=workers,
        users_events=max(1, int(users_events * scale)) if users else 0,
    )
