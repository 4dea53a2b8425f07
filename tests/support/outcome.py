"""Waiting for an engine to finish, and checking its outputs against the reference implementation."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from attribution.contract.topics import INPUTS
from attribution.core.model import Event
from attribution.core.rules import ProjectSettings
from attribution.state.keys import Keys
from attribution.state.router import close, connect
from tests.support.identity_ref import resolved
from tests.support.kafka import Engine, TopicReader
from tests.support.reference import (
    normalise_conversion,
    normalise_day,
    normalise_now,
    normalise_tally,
    reference,
    subscriptions,
)

WRITTEN_BY_WORKERS = {"identity"}  # inputs the workers produce (and consume) themselves


def consumed_everything(engine: Engine, timeout_s: float = 120.0, markers: tuple[str, ...] = ()) -> None:
    """Wait until the group's committed offsets reach the end of every input partition (``markers``:
    inputs that a transactional producer wrote last, so they end in a commit marker)."""
    cfg = engine.config
    probe = Consumer(cfg.kafka({"group.id": cfg.group_id, "enable.auto.commit": False}))
    try:
        tps = [TopicPartition(cfg.topic(k), p) for k in INPUTS for p in range(cfg.partitions)]
        # An input the workers write themselves in exactly-once mode ends with a transaction marker:
        # the last offset is no record, and a committed offset never passes it.
        slack = {
            cfg.topic(k): 1 if (cfg.exactly_once and k in WRITTEN_BY_WORKERS) or k in markers else 0
            for k in INPUTS
        }
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {(tp.topic, tp.partition): tp.offset for tp in probe.committed(tps, timeout=10)}
            ends = {
                (tp.topic, tp.partition): max(
                    probe.get_watermark_offsets(tp, timeout=10)[1],
                    engine.produced_ends.get((tp.topic, tp.partition), -1),
                )
                for tp in tps
            }
            # an end the broker could not tell (negative, e.g. OFFSET_INVALID) is not "consumed"; an
            # empty partition (end 0) has nothing to consume, so no committed offset either
            behind = [
                k for k in ends if ends[k] < 0 or (ends[k] > 0 and committed[k] < ends[k] - slack[k[0]])
            ]
            if not behind:
                return
            assert time.monotonic() < deadline, (
                f"not consumed within {timeout_s} s: {[(k, committed[k], ends[k]) for k in behind[:3]]}"
                " ((topic, partition), committed, end)"
            )
            time.sleep(0.2)
    finally:
        probe.close()


def tallies_settled(engine: Engine, redis_url: str, reader: TopicReader, timeout_s: float = 60.0) -> None:
    """Wait until no campaign is waiting for its tally to be published, then read the topic to its end."""
    client = connect(redis_url)
    dirty = Keys(engine.config.redis_prefix).dirty
    deadline = time.monotonic() + timeout_s
    while client.zcard(dirty):
        assert time.monotonic() < deadline, "tallies still dirty"
        time.sleep(0.1)
    close(client)
    reader.read_to_end()


def settled(
    engine: Engine,
    redis_url: str,
    tallies: TopicReader,
    convs: TopicReader,
    timeout_s: float = 120.0,
    markers: tuple[str, ...] = (),
) -> None:
    """Everything consumed, every tally published and read, the conversions read to their end."""
    consumed_everything(engine, timeout_s=timeout_s, markers=markers)
    tallies_settled(engine, redis_url, tallies, timeout_s=timeout_s)
    convs.read_to_end(timeout_s=timeout_s)


def assert_exact(
    events: list[Event], settings: ProjectSettings, tallies: TopicReader, convs: TopicReader
) -> int:
    # identities are on in every engine of the tests: the reference runs on the resolved events
    project = {settings.project_id: settings}
    want_tallies, want_convs = reference(resolved(events, project), project)
    got = tallies.latest_tallies()
    assert set(got) == set(want_tallies)
    for key, want in want_tallies.items():
        have = normalise_tally(got[key])
        assert have == want, (key, _diff(have, want))
    latest = {cid: normalise_conversion(c) for cid, c in convs.latest_by_id().items()}
    wanted = {cid: normalise_conversion(c) for cid, c in want_convs.items()}
    assert latest == wanted, (
        f"{len(latest.keys() - wanted.keys())} unexpected, {len(wanted.keys() - latest.keys())} missing, "
        f"{sum(latest[k] != wanted[k] for k in latest.keys() & wanted.keys())} different conversions"
    )
    return len(convs.records) - len(latest)  # records that repeat an existing conversion_id


def assert_subscriptions_exact(
    events: list[Event], settings: ProjectSettings, subs: TopicReader
) -> tuple[int, int]:
    """The last record of every key of the subscriptions topic against the reference: the project's
    now-record, and each day's (a day the reference has no session on may only say 0).
    Returns (subscribed now, subscribe sessions) for the report."""
    project = settings.project_id
    want = subscriptions(events, {project: settings}).get(project)
    latest = subs.latest_subscriptions()
    if want is None:
        assert project not in latest or latest[project]["subscribed_now"] == 0, latest.get(project)
        return 0, 0
    have = normalise_now(latest[project])
    assert have == want["now"], _diff(have, want["now"])
    days = {k.split(":", 1)[1]: normalise_day(r) for k, r in latest.items() if k.startswith(f"{project}:")}
    for day in sorted(days.keys() | want["days"].keys()):
        want_day = want["days"].get(day, {"project_id": project, "day": day, "subscribe_sessions": 0})
        assert days.get(day) == want_day, (day, days.get(day), want_day)
    return want["now"]["subscribed_now"], sum(d["subscribe_sessions"] for d in want["days"].values())


def _diff(have: dict[str, Any], want: dict[str, Any], path: str = "") -> list[str]:
    """The paths where two nested dicts differ, with both values."""
    out = []
    for k in sorted(have.keys() | want.keys(), key=str):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{path}{k}.")
        elif a != b:
            out.append(f"{path}{k}: got {a!r}, want {b!r}")
    return out
