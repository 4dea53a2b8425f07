"""Chaos soak: 2-3 worker processes, SIGKILLed at random and replaced while traffic flows; the
outputs must equal the reference. Short in ``make test``; ``make soak`` sets SOAK_EVENTS=1000000
and SOAK_KILLS=20 (and runs single Redis and Redis Cluster alike).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from attribution.core.model import Event, Identity
from tests.support.identity_ref import device_key
from tests.support.kafka import Engine, engine_config
from tests.support.outcome import assert_exact, assert_subscriptions_exact, settled
from tests.support.soak import GRACE_MS, SOAK_SETTINGS, Chaos, produce_over, scenario, soak_start

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("SOAK_EVENTS", "50000"))
KILLS = int(os.environ.get("SOAK_KILLS", "3"))
SECONDS = float(os.environ.get("SOAK_SECONDS", str(max(12, EVENTS // 4000))))


def test_soak_with_kills_and_rebalances_equals_the_reference(
    kafka_bootstrap: str, redis_and_runtime: tuple[str, str, str]
) -> None:
    name, url, runtime = redis_and_runtime
    seed = 20261123
    engine = Engine(
        engine_config(
            kafka_bootstrap,
            url,
            uuid.uuid4().hex[:8],
            partitions=6,
            grace_ms=GRACE_MS,
            batch_size=2000,
            runtime=runtime,
        )
    )
    engine.put_settings(SOAK_SETTINGS)
    start = soak_start(EVENTS)
    events, ordered = scenario(EVENTS, seed, start, users=max(500, EVENTS // 20))
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    subs = engine.reader("subscriptions")
    chaos = Chaos(engine, seed, every_s=max(1.5, SECONDS / (KILLS + 1)))
    began = time.monotonic()
    chaos.start()
    try:
        produce_over(engine, ordered, SECONDS, lambda: tallies.poll(0))
        chaos.wait_for_kills(KILLS, timeout_s=300)
        chaos.calm()
        settled(engine, url, tallies, convs, timeout_s=900)
        subs.read_to_end(timeout_s=120)
    finally:
        chaos.stop()
        engine.close()
    repeats = assert_exact(events, SOAK_SETTINGS, tallies, convs)
    retracted = sum(1 for c in convs.records if c.get("retracted"))
    anonymous_then_linked = _linked_anonymous(events)
    assert anonymous_then_linked > EVENTS // 100, anonymous_then_linked  # identities really in the mix
    subscribers, sessions = assert_subscriptions_exact(events, SOAK_SETTINGS, subs)
    report = chaos.report
    assert all(code == 0 for code in report.exit_codes), report.exit_codes  # no worker died on its own
    print(  # noqa: T201 - the soak report
        f"\nsoak on {name}, {runtime} runtime: events {len(ordered)} ({len(events)} distinct),"
        f" kills {report.kills},"
        f" workers started {report.started}, rebalances {report.rebalances},"
        f" repeated conversion records {repeats} ({retracted} retractions),"
        f" anonymous events of linked devices {anonymous_then_linked},"
        f" subscribed now {subscribers}, subscribe sessions {sessions},"
        f" {time.monotonic() - began:.0f} s, tallies and subscriptions == reference: yes"
    )


def _linked_anonymous(events: list[Event]) -> int:
    """Anonymous events whose device (or visitor) some event links to a user."""
    linked = {device_key(e) for e in events if not isinstance(e, Identity) and e.user_id is not None}
    return sum(
        1 for e in events if not isinstance(e, Identity) and e.user_id is None and device_key(e) in linked
    )
