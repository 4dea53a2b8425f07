"""The ``attribution`` command: worker | topics | settings | tally | rebuild | demo | bench."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from attribution.errors import AttributionError, BadSettings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BadSettings as exc:
        print(f"attribution: bad setting {exc.field}: {exc.reason}", file=sys.stderr)
        return 2
    except AttributionError as exc:
        print(f"attribution: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attribution", description=__doc__)
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="run a worker (consumer group member) until SIGTERM/SIGINT")
    w.set_defaults(func=_worker)

    t = sub.add_parser("topics", help="manage the engine's topics")
    tsub = t.add_subparsers(required=True, metavar="ACTION")
    tc = tsub.add_parser("create", help="create all topics (idempotent; inputs co-partitioned)")
    tc.add_argument(
        "--partitions", type=int, default=None, help="input/output partitions (ATTRIBUTION_PARTITIONS)"
    )
    tc.set_defaults(func=_topics_create)

    s = sub.add_parser("settings", help="project settings (conversion events)")
    ssub = s.add_subparsers(required=True, metavar="ACTION")
    sp = ssub.add_parser("put", help="validate FILE(s) and publish them to the settings topic")
    sp.add_argument("files", nargs="+", type=Path)
    sp.set_defaults(func=_settings_put)
    sv = ssub.add_parser("validate", help="validate FILE(s) only")
    sv.add_argument("files", nargs="+", type=Path)
    sv.set_defaults(func=_settings_validate)

    ta = sub.add_parser("tally", help="print the current tally of a campaign, read from Redis")
    ta.add_argument("project")
    ta.add_argument("campaign")
    ta.set_defaults(func=_tally)

    r = sub.add_parser(
        "rebuild",
        help="after Redis lost its data: wipe the prefix, replay the inputs into a new state generation",
    )
    r.add_argument(
        "--from",
        dest="since",
        choices=("earliest", "window"),
        default="earliest",
        help="earliest: every retained record (exact with full retention); window: now - longest "
        "conversion window - grace (faster; tallies then count only the replayed events)",
    )
    r.add_argument(
        "--yes", action="store_true", help="confirm: every key under ATTRIBUTION_REDIS_PREFIX is deleted"
    )
    r.add_argument("--force", action="store_true", help="run although the consumer group still lists members")
    r.set_defaults(func=_rebuild)

    d = sub.add_parser("demo", help="embedded broker + Redis, worker, demo traffic and live tallies")
    d.add_argument("--rate", type=int, default=300, help="demo input events per second")
    d.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    d.add_argument("--partitions", type=int, default=4)
    d.set_defaults(func=_demo)

    b = sub.add_parser("bench", help="throughput, latency and memory in one run (make bench)")
    b.add_argument(
        "--scale", type=float, default=1.0, help="backlog size; 1.0 = 1M sends, 150k clicks, 60k goals"
    )
    b.add_argument("--latency-rate", type=int, default=20_000, help="events/s of the steady latency load")
    b.add_argument("--latency-seconds", type=float, default=30.0)
    b.add_argument("--naive-events", type=int, default=20_000, help="events for the one-round-trip baseline")
    b.add_argument("--out", type=Path, default=Path("bench-results.json"))
    b.add_argument(
        "--rss-seconds",
        type=float,
        default=0,
        help="also sample a worker's RSS this long",
    )
    b.add_argument("--rss-rate", type=int, default=2_500, help="events/s of the RSS run")
    b.add_argument("--rss-only", action="store_true", help="only the RSS run")
    b.set_defaults(func=_bench)
    return p


def _config() -> Any:
    from attribution.infra.config import load_config

    config = load_config()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config


def _worker(args: argparse.Namespace) -> int:
    from attribution.runtime.worker import Worker

    worker = Worker(_config())

    def stop(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("attribution").info("signal %d: finishing the batch in hand", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from attribution.runtime.kafka_io import create_topics

    for topic, status in create_topics(_config(), args.partitions).items():
        print(f"{topic}: {status}")
    return 0


def _read_settings(files: list[Path]) -> list[Any]:
    from attribution import contract
    from attribution.core.rules import parse_settings
    from attribution.infra.config import load_config

    limit = load_config().max_conversion_events
    docs = []
    for path in files:
        try:
            raw = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise BadSettings(str(path), f"cannot read JSON: {exc}") from None
        for doc in raw if isinstance(raw, list) else [raw]:
            try:
                contract.validator("settings")(doc)
            except AttributionError as exc:
                raise BadSettings(str(path), str(exc)) from None
            docs.append(parse_settings(doc, limit))
    return docs


def _settings_validate(args: argparse.Namespace) -> int:
    for doc in _read_settings(args.files):
        print(f"{doc.project_id} v{doc.version}: {len(doc.conversion_events)} conversion events ok")
    return 0


def _settings_put(args: argparse.Namespace) -> int:
    from attribution.runtime.kafka_io import put_settings

    docs = _read_settings(args.files)
    put_settings(_config(), docs)
    for doc in docs:
        print(f"{doc.project_id} v{doc.version}: published")
    return 0


def _tally(args: argparse.Namespace) -> int:
    from attribution.core.rules import SettingsBook
    from attribution.core.tally import snapshot
    from attribution.runtime.kafka_io import SettingsFeed
    from attribution.state.keys import Keys
    from attribution.state.redis_store import RedisStore

    config = _config()
    keys = Keys(config.redis_prefix)
    store = RedisStore.from_url(config.redis_url.get_secret_value(), keys, config.tally_ttl_ms)
    fields = store.counters([keys.campaign(args.project, args.campaign)])[0]
    if not fields:
        print(f"attribution: no tally for {args.project}:{args.campaign}", file=sys.stderr)
        return 1
    book = SettingsBook()
    feed = SettingsFeed(config, book)
    try:
        feed.load_all()
    finally:
        feed.close()
    snap = snapshot(args.project, args.campaign, fields, book.get(args.project))
    print(orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode())
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from attribution.runtime.rebuild import rebuild

    if not args.yes:
        print(
            "attribution: rebuild deletes every key under ATTRIBUTION_REDIS_PREFIX; pass --yes",
            file=sys.stderr,
        )
        return 2
    print(orjson.dumps(rebuild(_config(), args.since, args.force)).decode())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from attribution.devkit.demo import run_demo

    return run_demo(rate=args.rate, duration_s=args.duration, partitions=args.partitions)


def _bench(args: argparse.Namespace) -> int:
    from attribution.devkit.bench import run_bench

    if args.rss_only and not args.rss_seconds:
        raise SystemExit("--rss-only needs --rss-seconds")
    run_bench(
        args.scale,
        args.latency_rate,
        args.latency_seconds,
        args.naive_events,
        args.out,
        rss=(args.rss_seconds, args.rss_rate, args.rss_only),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
