"""``attribution bench --api-only`` / ``make bench-api``: latency of ``attribution serve`` under load.

Starts a worker and ``attribution serve`` as child processes (on the embedded broker and Redis, or
on KAFKA_BOOTSTRAP_SERVERS / REDIS_URL), produces a backlog over ``campaigns`` campaigns, waits until
the worker consumed it and published every tally and until serve holds every campaign, then drives
the API on loopback: ``clients`` keep-alive HTTP/1.1 clients, one process each, in a closed loop (the
next request as soon as the answer is read) for ``seconds`` after a one-second warm-up, over a mix of
70% GET a campaign, 25% GET a conversion, 5% list the project's campaigns. Prints requests/s and
p50/p99/max latency per endpoint; the figures go under ``"api"`` in the results JSON (other results
in the file are kept). Bounded: the clients stop at the deadline or after ``MAX_REQUESTS`` each.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from attribution.devkit.bench import _caught_up
from attribution.devkit.bench_load import PROJECT, Shape, backlog, fresh, produce
from attribution.devkit.bench_rss import child_env, rss_bytes
from attribution.devkit.demo import services
from attribution.devkit.embedded import free_port
from attribution.infra.config import Config, load_config
from attribution.state.keys import Keys
from attribution.state.router import close, connect

HOST = "127.0.0.1"
WARMUP_S = 1.0
MAX_REQUESTS = 500_000  # per client
SAMPLED_CONVERSIONS = 5_000
#: (name, share of requests, path template)
MIX = (
    ("GET campaign", 0.70, "/v1/projects/{project}/campaigns/{campaign}"),
    ("GET conversion", 0.25, "/v1/projects/{project}/conversions/{conversion}"),
    ("GET campaigns (list)", 0.05, "/v1/projects/{project}/campaigns"),
)


def _child_env(config: Config, port: int) -> dict[str, str]:
    return {**child_env(config), "ATTRIBUTION_API_HOST": HOST, "ATTRIBUTION_API_PORT": str(port)}


def _get(port: int, path: str, token: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _poll(ready: Callable[[], bool], timeout_s: float, what: str, child: subprocess.Popen[bytes]) -> None:
    """Poll ``ready`` until true; fail when ``child`` exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if child.poll() is not None:
            raise RuntimeError(f"{child.args!r} exited with {child.returncode} before {what}")
        try:
            if ready():
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout_s:g} s")
        time.sleep(0.1)


def _tallies_published(config: Config, timeout_s: float = 300) -> None:
    """Wait until no campaign waits for its tally to be published (the dirty set is empty)."""
    client = connect(config.redis_url.get_secret_value())
    try:
        deadline = time.monotonic() + timeout_s
        while client.zcard(Keys(config.redis_prefix).dirty):
            if time.monotonic() > deadline:
                raise TimeoutError("tallies still waiting to be published")
            time.sleep(0.1)
    finally:
        close(client)


def _conversion_ids(config: Config, timeout_s: float = 120) -> list[str]:
    """Every conversion_id on the conversions topic (read to its end as of now)."""
    topic = config.topic("conversions")
    consumer = Consumer(config.kafka({"group.id": f"bench-api-{os.getpid()}", "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        consumer.assign(tps)
        ids: set[str] = set()
        done = {p for p, end in ends.items() if end <= 0}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError("conversions not read to their end")
            for m in consumer.consume(10_000, 0.5):
                if m.error() is None and m.value():
                    ids.add(orjson.loads(m.value() or b"{}")["conversion_id"])
                    if (m.offset() or 0) + 1 >= ends[m.partition() or 0]:
                        done.add(m.partition() or 0)
        return sorted(ids)
    finally:
        consumer.close()


def _client(
    index: int,
    port: int,
    token: str | None,
    paths: dict[str, list[str]],
    seconds: float,
    go: Any,
    results: Any,
) -> None:
    """One keep-alive client (a process of its own): waits for the common start, then requests until
    the deadline; puts {endpoint: [latency ms]} and {endpoint: errors} on ``results``."""
    rng = random.Random(index)
    names = [name for name, _, _ in MIX]
    weights = [share for _, share, _ in MIX]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors = dict.fromkeys(names, 0)
    sizes = dict.fromkeys(names, 0)
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    start_at = go.get(timeout=120)  # time.monotonic() is one clock for every process
    measure_from, end = start_at + WARMUP_S, start_at + WARMUP_S + seconds
    while (now := time.monotonic()) < start_at:
        time.sleep(min(0.01, start_at - now))
    for _ in range(MAX_REQUESTS):
        name = rng.choices(names, weights)[0]
        path = rng.choice(paths[name])
        began = time.monotonic()
        if began >= end:
            break
        try:
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            status, body = 0, b""
        took = time.monotonic() - began
        if began >= measure_from:
            latencies[name].append(took * 1000)
            sizes[name] += len(body)
            if status != 200:
                errors[name] += 1
    conn.close()
    results.put((latencies, errors, sizes))


def _load(port: int, token: str | None, paths: dict[str, list[str]], clients: int, seconds: float) -> Any:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs librdkafka threads
    go, results = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(i, port, token, paths, seconds, go, results), daemon=True)
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    start_at = time.monotonic() + 2.0 + 0.5 * clients  # time for each to start its interpreter
    for _ in procs:
        go.put(start_at)
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=start_at - time.monotonic() + WARMUP_S + seconds + 120))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    return got


def _summary(got: list[Any], seconds: float) -> dict[str, Any]:
    def pick(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else 0.0

    endpoints: dict[str, Any] = {}
    everything: list[float] = []
    for name, _, template in MIX:
        values = sorted(v for latencies, _, _ in got for v in latencies[name])
        everything += values
        endpoints[name] = {
            "path": template,
            "requests": len(values),
            "requests_per_s": round(len(values) / seconds, 1),
            "p50_ms": pick(values, 0.5),
            "p99_ms": pick(values, 0.99),
            "max_ms": pick(values, 1.0),
            "mean_bytes": round(sum(sizes[name] for _, _, sizes in got) / len(values)) if values else 0,
            "errors": sum(errors[name] for _, errors, _ in got),
        }
    everything.sort()
    endpoints["all"] = {
        "requests": len(everything),
        "requests_per_s": round(len(everything) / seconds, 1),
        "p50_ms": pick(everything, 0.5),
        "p99_ms": pick(everything, 0.99),
        "max_ms": pick(everything, 1.0),
        "errors": sum(e["errors"] for e in endpoints.values()),
    }
    return endpoints


def _measure(
    env: dict[str, str],
    campaigns: int,
    clients: int,
    seconds: float,
    child: Callable[[str, dict[str, str]], subprocess.Popen[bytes]],
) -> dict[str, Any]:
    os.environ.update(env)
    base = load_config().model_copy(update={"session_timeout_ms": 6000, "partitions": 4})
    config = fresh(base)
    shape = Shape(
        sends=100 * campaigns,
        clicks=15 * campaigns,
        goals=6 * campaigns,
        users=20 * campaigns,
        campaigns=campaigns,
    )
    records = backlog(shape, int(time.time() * 1000) - 6 * 3600_000, 4 * 3600_000)
    wanted = {orjson.loads(v)["campaign_id"] for kind, _, v in records if kind == "sends"}
    produce(config, records)
    port = free_port()
    child_env = _child_env(config, port)
    child("worker", child_env)
    started = time.perf_counter()
    _caught_up(config, timeout_s=600)
    _tallies_published(config)
    catch_up_s = time.perf_counter() - started
    conversions = _conversion_ids(config)
    serve = child("serve", child_env)
    started = time.perf_counter()
    token = os.environ.get("ATTRIBUTION_API_TOKEN")
    _poll(lambda: _get(port, "/readyz", None)[0] == 200, 120, "ready", serve)
    ready_s = time.perf_counter() - started

    def holds_every_campaign() -> bool:
        status, body = _get(port, f"/v1/projects/{PROJECT}/campaigns", token)
        return status == 200 and len(orjson.loads(body)["campaigns"]) == len(wanted)

    _poll(holds_every_campaign, 120, f"holding {len(wanted)} campaigns", serve)
    rng = random.Random(1)
    paths = {
        MIX[0][0]: [f"/v1/projects/{PROJECT}/campaigns/{quote(c)}" for c in sorted(wanted)],
        MIX[1][0]: [
            f"/v1/projects/{PROJECT}/conversions/{quote(c)}"
            for c in rng.sample(conversions, min(SAMPLED_CONVERSIONS, len(conversions)))
        ],
        MIX[2][0]: [f"/v1/projects/{PROJECT}/campaigns"],
    }
    got = _load(port, token, paths, clients, seconds)
    return {
        "campaigns": len(wanted),
        "conversions_held": len(conversions),
        "backlog_events": len(records),
        "worker_catch_up_s": round(catch_up_s, 2),
        "serve_ready_s": round(ready_s, 2),
        "clients": clients,
        "seconds": seconds,
        "warmup_s": WARMUP_S,
        "mix": {name: share for name, share, _ in MIX},
        "endpoints": _summary(got, seconds),
        "serve_rss_mib": round(rss_bytes(serve.pid) / 2**20, 1),
        "cpus": os.cpu_count(),
    }


def run_api_bench(campaigns: int, clients: int, seconds: float, out: Path) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="bench-api-"))
    children: list[subprocess.Popen[bytes]] = []

    def child(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (logs / f"{command}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "attribution.cli", command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        children.append(proc)
        return proc

    with services() as env:
        try:
            res = _measure(env, campaigns, clients, seconds, child)
        except BaseException:
            for log in sorted(logs.glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log.name}:", *tail, sep="\n", file=sys.stderr)  # noqa: T201 - why it failed
            raise
        finally:
            for proc in reversed(children):
                _stop(proc)
            shutil.rmtree(logs, ignore_errors=True)
    results: dict[str, Any] = {}
    if out.is_file():
        try:
            results = orjson.loads(out.read_bytes())
        except orjson.JSONDecodeError:
            results = {}
    results["api"] = res
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(render_api(res))  # noqa: T201 - the bench's output is the table
    return res


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def render_api(r: dict[str, Any]) -> str:
    lines = [
        f"API bench: {r['campaigns']:,} campaigns and {r['conversions_held']:,} conversions held by serve "
        f"(worker caught up with {r['backlog_events']:,} events in {r['worker_catch_up_s']} s; serve ready "
        f"{r['serve_ready_s']} s after start, RSS {r['serve_rss_mib']} MiB after the load)",
        f"{r['clients']} keep-alive clients (a process each, closed loop) for {r['seconds']:g} s on "
        f"loopback, {r['cpus']} CPUs shared with serve, worker, broker and Redis",
        "",
        f"{'endpoint':<22}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'bytes':>9}{'errors':>8}",
    ]
    for name, e in r["endpoints"].items():
        lines.append(
            f"{name:<22}{e['requests']:>10,}{e['requests_per_s']:>9,.0f}{e['p50_ms']:>9}{e['p99_ms']:>9}"
            f"{e['max_ms']:>9}{e.get('mean_bytes', ''):>9}{e['errors']:>8}"
        )
    return "\n".join(lines)
