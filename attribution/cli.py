"""The ``attribution`` command (click): worker, serve, topics, settings, tally, rebuild; the developer's
commands (demo, bench) are in ``attribution.cli_dev``, registered on the same group.

Commands import what they need when they run, so ``attribution --help`` stays fast and light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, cast

import click
import orjson
from redis.exceptions import RedisError

from attribution import __version__
from attribution.cli_dev import bench, demo
from attribution.errors import AttributionError, BadSettings
from attribution.infra.config import mask_url

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
ENV_HELP = (
    "The worker is configured by environment variables (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, "
    "ATTRIBUTION_*, any KAFKA_* librdkafka property): `attribution settings show` lists them with "
    "their values and defaults. What counts as a conversion (events, windows, bases) is per project, "
    "on the settings topic: `attribution settings put FILE`."
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2: bad setting or usage, 1: other failures)."""
    try:
        cli.main(args=argv, prog_name="attribution", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("attribution: aborted", err=True)
        return 1
    except BadSettings as exc:
        click.echo(f"attribution: bad setting {exc.field}: {exc.reason}", err=True)
        return 2
    except AttributionError as exc:
        click.echo(f"attribution: {exc}", err=True)
        return 1
    except RedisError as exc:  # one that no layer below turned into an AttributionError
        click.echo(
            f"attribution: Redis at REDIS_URL failed ({type(exc).__name__}: {mask_url(str(exc))})", err=True
        )
        return 1
    return 0


@click.group(context_settings=CONTEXT, epilog=ENV_HELP)
@click.version_option(__version__, "-V", "--version", prog_name="attribution")
def cli() -> None:
    """Streaming conversion attribution: Kafka sends/clicks x goals joined in Redis, exact
    per-campaign tallies.

    \b
    First steps (a broker and Redis reachable, see `attribution settings show`):
      attribution topics create
      attribution settings put my-project.json
      attribution worker
    """


def _config() -> Any:
    from attribution.infra.config import load_config
    from attribution.infra.logging import configure_logging

    config = load_config()
    configure_logging(config.log_level, config.log_format)
    return config


@cli.command(
    epilog=ENV_HELP
    + "\n\nSIGTERM or SIGINT: finish the batch in hand, publish tallies, commit and leave the group. "
    "Exit codes: 0 stopped, 1 failure (LostState: run `attribution rebuild`), 2 bad setting."
)
@click.option(
    "--runtime",
    type=click.Choice(["confluent", "faust"]),
    default=None,
    help="confluent: the confluent-kafka batch worker; faust: the same engine as faust-streaming "
    "agents (default: ATTRIBUTION_RUNTIME, else confluent)",
)
def worker(runtime: str | None) -> None:
    """Run a worker (a consumer group member) until SIGTERM/SIGINT.

    \b
    Examples:
      KAFKA_BOOTSTRAP_SERVERS=broker:9092 REDIS_URL=redis://redis:6379/0 attribution worker
      ATTRIBUTION_LOG_FORMAT=json ATTRIBUTION_METRICS_PORT=9464 attribution worker
      attribution worker --runtime faust
    """
    config = _config()
    from attribution.runtime.telemetry import pace_gc

    pace_gc()  # this process is the worker's own
    if (runtime or config.runtime) == "faust":
        from attribution.runtime.faust import run_worker

        run_worker(config)
        return
    from attribution.runtime.worker import Worker

    running = Worker(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("attribution").info("signal %d: finishing the batch in hand", signum)
        running.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    running.run()


@cli.command(
    epilog="Settings: ATTRIBUTION_API_PORT (8080), ATTRIBUTION_API_HOST, ATTRIBUTION_API_TOKEN (optional "
    "bearer token), ATTRIBUTION_API_CONVERSIONS, plus KAFKA_* and ATTRIBUTION_TOPIC_PREFIX like the worker. "
    "It needs no Redis.\n\n\b\nExample:\n  ATTRIBUTION_API_PORT=8080 attribution serve\n"
    "  curl localhost:8080/v1/projects/shop-kr/campaigns"
)
def serve() -> None:
    """Serve the tallies and conversions over HTTP, with a live campaign page at /.

    Reads the compacted tallies topic (and the conversions topic) into memory from the beginning;
    /readyz is 200 once it has caught up. SIGTERM/SIGINT: finish the requests in flight, stop."""
    from attribution.api.server import serve as run_server

    run_server(_config())


@cli.group(context_settings=CONTEXT)
def topics() -> None:
    """Manage the engine's Kafka topics."""


@topics.command(
    "create",
    epilog="Example:\n\n\b\n  ATTRIBUTION_REPLICATION_FACTOR=3 attribution topics create --partitions 24",
)
@click.option(
    "--partitions",
    type=click.IntRange(1, 10_000),
    default=None,
    show_default="ATTRIBUTION_PARTITIONS",
    help="Partitions of the input and output topics (settings has one).",
)
def topics_create(partitions: int | None) -> None:
    """Create every topic (idempotent): inputs co-partitioned, settings and tallies compacted.

    An existing topic is left as it is; one whose partition count differs is reported."""
    from attribution.runtime.kafka_io import create_topics

    for topic, status in create_topics(_config(), partitions).items():
        click.echo(f"{topic}: {status}")
        if status.startswith("exists with"):
            click.echo(
                f"attribution: warning: {topic} {status.removeprefix('exists ')}; the count of an "
                "existing topic is not changed (inputs must stay co-partitioned)",
                err=True,
            )


@cli.group(context_settings=CONTEXT)
def settings() -> None:
    """Project settings (conversion events) and the worker's own settings."""


FILES = click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))


def _read_settings(files: tuple[Path, ...]) -> list[tuple[Path, Any]]:
    """(file, validated ProjectSettings) for every document; errors name the file (and the document)."""
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
        many = isinstance(raw, list)
        for i, doc in enumerate(raw if many else [raw]):
            where = f"{path} (document {i + 1})" if many else str(path)
            try:
                # the worker's own check first: its errors name the field (an unknown one with the
                # fields expected there); then the schema's limits it does not check itself
                parsed = parse_settings(doc, limit)
                contract.validator("settings")(doc)
                docs.append((path, parsed))
            except BadSettings as exc:
                raise BadSettings(where, str(exc)) from None
            except AttributionError as exc:
                raise BadSettings(where, str(exc)) from None
    return docs


@settings.command(
    "validate", epilog="Example:\n\n\b\n  attribution settings validate shop-kr.json shop-us.json"
)
@FILES
def settings_validate(files: tuple[Path, ...]) -> None:
    """Check settings documents (a JSON object, or a list of them) without publishing them."""
    for path, doc in _read_settings(files):
        click.echo(
            f"{path}: {doc.project_id} v{doc.version}: {len(doc.conversion_events)} conversion events ok"
        )


@settings.command("put", epilog="Example:\n\n\b\n  attribution settings put shop-kr.json")
@FILES
def settings_put(files: tuple[Path, ...]) -> None:
    """Validate settings documents and publish them to the settings topic.

    A version that is not newer than the published one is refused (re-publishing the same version
    with the same content is a no-op), so the compacted topic never rolls a project back."""
    from attribution.runtime.settings_sync import publish

    docs = _read_settings(files)
    config = _config()
    try:
        status = publish(config, [doc for _, doc in docs])
    except BadSettings as exc:
        path = next((str(p) for p, d in docs if exc.field == f"{d.project_id} version"), "settings")
        raise BadSettings(path, f"{exc.field} {exc.reason}") from None
    for name, what in status.items():
        click.echo(f"{name}: {what}")


@settings.command(
    "show", epilog="Example:\n\n\b\n  REDIS_URL=rediss://app:pw@redis:6380/0 attribution settings show"
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per setting instead of a table.")
def settings_show(as_json: bool) -> None:
    """Print every worker setting: its value, where it came from and its default (secrets masked)."""
    from attribution.infra.config import load_config
    from attribution.infra.settings_view import rows, table

    found = rows(load_config(), os.environ)
    if as_json:
        for row in found:
            click.echo(orjson.dumps(row._asdict()).decode())
    else:
        click.echo(table(found))


@cli.command(
    epilog="Examples:\n\n\b\n  attribution tally shop-kr spring-sale\n  attribution tally shop-kr "
    "spring-sale --json\n  attribution tally shop-kr --subscriptions --days 30"
)
@click.argument("project")
@click.argument("campaign", required=False)
@click.option("--subscriptions", is_flag=True, help="The project's web-push subscriptions (no CAMPAIGN).")
@click.option(
    "--days", type=click.IntRange(0), default=14, help="With --subscriptions: newest days (0: all)."
)
@click.option("--json", "as_json", is_flag=True, help="The records as JSON (as the topics get them).")
@click.pass_context
def tally(
    ctx: click.Context, project: str, campaign: str | None, subscriptions: bool, days: int, as_json: bool
) -> None:
    """Print a campaign's current tally: sends, accepted, failed, displayed, clicks, clicked_alias,
    link_clicks, and per goal the goals (send basis) and goals after click (click basis). With
    --subscriptions: the project's subscribers now, among recent visitors, and subscribe sessions
    per day (newest first). Read from Redis (no broker needed): the records the topics get next."""
    from attribution.api.report import campaign_report, subscriptions_report
    from attribution.core.rules import SettingsBook, parse_settings
    from attribution.core.subscriptions import day_snapshot, now_snapshot
    from attribution.core.tally import snapshot
    from attribution.state.keys import Keys
    from attribution.state.redis_store import RedisStore

    if (campaign is None) != subscriptions:
        if subscriptions:
            raise click.UsageError("give CAMPAIGN or --subscriptions, not both", ctx)
        campaign_arg = next(p for p in ctx.command.params if p.name == "campaign")
        raise click.MissingParameter(ctx=ctx, param=campaign_arg, param_hint="'CAMPAIGN'")
    config = _config()
    keys = Keys(config.redis_prefix)
    store = RedisStore.from_url(config.redis_url.get_secret_value(), keys, config.tally_ttl_ms)
    try:
        wanted = [keys.campaign(project, campaign or "")]
        listed: list[str] = []  # with --subscriptions: the project's days, newest first
        if subscriptions:  # the project's set names its day records, as it names its campaigns
            members = cast(set[bytes], store.client.smembers(keys.project_campaigns(project)))
            listed = sorted({d for m in members if (d := keys.parse_subject(m.decode()).day)}, reverse=True)
            wanted = [keys.subscriptions(project), *(keys.subscription_day(project, d) for d in listed)]
        hashes = store.counters(wanted)
        book = SettingsBook()
        for document in store.settings_documents():
            with contextlib.suppress(BadSettings, orjson.JSONDecodeError):  # then the rate uses defaults
                book.put(parse_settings(orjson.loads(document), config.max_conversion_events))
    finally:
        store.close()
    where = f"under ATTRIBUTION_REDIS_PREFIX={keys.prefix}"
    if not subscriptions:
        if not hashes[0]:
            raise AttributionError(f"no tally for {project}:{campaign} {where}")
        snap = snapshot(project, campaign or "", hashes[0], book.get(project))
        click.echo(
            orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode() if as_json else campaign_report(snap)
        )
        return
    now = now_snapshot(project, hashes[0], book.get(project)) if hashes[0] else None
    records = [day_snapshot(project, d, h) for d, h in zip(listed, hashes[1:], strict=True) if h]
    if now is None and not records:
        raise AttributionError(f"no subscriptions for project {project} {where}")
    shown = records[:days] if days else records
    if as_json:
        body = {"project_id": project, "now": now, "days": shown}
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(subscriptions_report(project, now, shown, len(records)))


@cli.command(epilog="Example:\n\n\b\n  attribution rebuild --yes --from earliest")
@click.option(
    "--from",
    "since",
    type=click.Choice(["earliest", "window"]),
    default="earliest",
    help="earliest: every retained record (exact with full retention); window: now - longest "
    "conversion window - grace (faster; tallies then count only the replayed events).",
)
@click.option("--yes", is_flag=True, help="Confirm: every key under ATTRIBUTION_REDIS_PREFIX is deleted.")
@click.option("--force", is_flag=True, help="Run although the consumer group still lists members.")
def rebuild(since: str, yes: bool, force: bool) -> None:
    """After Redis lost its data (LostState): wipe the prefix and replay the inputs into a new
    state generation. Stop every worker first."""
    from attribution.runtime.rebuild import rebuild as run_rebuild

    if not yes:
        raise click.UsageError("rebuild deletes every key under ATTRIBUTION_REDIS_PREFIX; pass --yes")
    click.echo(orjson.dumps(run_rebuild(_config(), since, force)).decode())


cli.add_command(demo)
cli.add_command(bench)


if __name__ == "__main__":
    sys.exit(main())
