"""A third-party client reads the outputs: Debian's ``kcat`` (librdkafka's command-line consumer, no
code of ours) sees on ``conversions`` and ``tallies`` exactly what the engine published and what the
reference model expects, keyed ``project_id:campaign_id`` as the contract says."""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.integration.test_recovery import HOUR, SHORT_WINDOWS, scenario
from tests.support.kafka import Engine, TopicReader, engine_config
from tests.support.outcome import assert_exact, settled
from tests.support.reference import normalise_conversion, normalise_tally, reference

pytestmark = pytest.mark.integration
KCAT = shutil.which("kcat")


@dataclass(frozen=True)
class Record:
    """One record as kcat printed it."""

    key: str
    partition: int
    offset: int
    value: dict[str, Any]


#: librdkafka 2.0.2 (inside kcat 1.7.1) misreads the tagged fields of some brokers' ApiVersions v3
#: answer (tansu's: "Protocol read buffer underflow for ApiVersion v3") and never connects. Then kcat
#: speaks the old protocol instead: no ApiVersions, fixed request versions, and offset 0 for the
#: beginning (tansu's ListOffsets v0 answer is not understood either). Fetch answers carry the
#: records as they are, so what kcat prints is the same.
LEGACY = ["-X", "api.version.request=false", "-X", "broker.version.fallback=0.9.0"]


@functools.cache
def kcat_options(bootstrap: str) -> tuple[str, ...]:
    """kcat's connection options for ``bootstrap``: none when its metadata request works, else LEGACY."""
    assert KCAT is not None
    for options, start in (([], "beginning"), (LEGACY, "0")):
        probe = subprocess.run(
            [KCAT, "-b", bootstrap, "-L", "-m", "3", "-q", *options],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return (*options, "-o", start)
    raise AssertionError(f"kcat cannot read metadata from {bootstrap}: {probe.stderr.decode()[-2000:]}")


def kcat(bootstrap: str, topic: str) -> list[Record]:
    """Every record of ``topic``, from the beginning of each partition to its end, read by kcat."""
    assert KCAT is not None
    argv = [KCAT, "-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-J", "-m", "10", *kcat_options(bootstrap)]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv} exited {done.returncode}: {done.stderr.decode()[-2000:]}"
    records = []
    for line in done.stdout.splitlines():
        envelope = orjson.loads(line)  # {"topic", "partition", "offset", "tstype", "ts", "key", "payload"...}
        assert envelope["topic"] == topic, envelope
        assert envelope["key"] is not None and envelope["payload"] is not None, envelope
        records.append(
            Record(
                envelope["key"], envelope["partition"], envelope["offset"], orjson.loads(envelope["payload"])
            )
        )
    return records


def payloads(values: Iterable[dict[str, Any]]) -> list[bytes]:
    """The records' content in a canonical form, sorted: equal lists are equal multisets of records."""
    return sorted(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


def check_keys(records: list[Record]) -> None:
    """Every key is the payload's ``project_id:campaign_id``, and a key lives in one partition."""
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in records:
        assert r.key == f"{r.value['project_id']}:{r.value['campaign_id']}", r
        partitions[r.key].add(r.partition)
    spread = {k: p for k, p in partitions.items() if len(p) > 1}
    assert not spread, f"keys in more than one partition: {spread}"


def last_by_offset(records: list[Record], field: str) -> dict[Any, dict[str, Any]]:
    """The record with the highest offset per ``field`` (what a compacting consumer keeps)."""
    latest: dict[Any, Record] = {}
    for r in records:
        name = r.value[field] if field != "key" else r.key
        kept = latest.get(name)
        if kept is not None:
            assert kept.partition == r.partition, (kept, r)
        if kept is None or r.offset > kept.offset:
            latest[name] = r
    return {k: r.value for k, r in latest.items()}


def test_kcat_reads_exactly_what_the_engine_published(kafka_bootstrap: str, redis_url: str) -> None:
    if KCAT is None:
        pytest.skip("Debian's kcat is not installed (apt-get install kcat)")
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], batch_size=500))
    engine.put_settings(SHORT_WINDOWS)
    events = scenario(int(time.time() * 1000) - 2 * HOUR, 10 * 60_000, 1000, 10, seed=23)
    engine.produce(events)
    tallies: TopicReader = engine.reader("tallies")
    convs: TopicReader = engine.reader("conversions")
    worker = engine.worker_thread()
    try:
        settled(engine, redis_url, tallies, convs)
    finally:
        worker.stop()
        engine.close()
    assert_exact(events, SHORT_WINDOWS, tallies, convs)  # the Python reader holds the exact outputs
    want_tallies, want_convs = reference(events, {SHORT_WINDOWS.project_id: SHORT_WINDOWS})
    assert want_tallies and want_convs  # the scenario credits something

    seen_tallies = kcat(kafka_bootstrap, engine.config.topic("tallies"))
    seen_convs = kcat(kafka_bootstrap, engine.config.topic("conversions"))
    # the same records as the Python reader, nothing more, nothing less
    assert payloads(r.value for r in seen_tallies) == payloads(tallies.records)
    assert payloads(r.value for r in seen_convs) == payloads(convs.records)
    check_keys(seen_tallies)
    check_keys(seen_convs)

    # tallies: the last record per key (what compaction keeps) is the newest version, and equals both
    # the Python reader's latest tally and the reference model's
    by_key = last_by_offset(seen_tallies, "key")
    newest: dict[str, dict[str, Any]] = {}
    for r in seen_tallies:
        if r.value["version"] >= newest.get(r.key, {"version": -1})["version"]:
            newest[r.key] = r.value
    assert by_key == newest
    python_latest = {f"{p}:{c}": t for (p, c), t in tallies.latest_tallies().items()}
    assert by_key == python_latest
    assert {k: normalise_tally(v) for k, v in by_key.items()} == {
        f"{p}:{c}": t for (p, c), t in want_tallies.items()
    }

    # conversions: the latest record per conversion_id is the reference set
    latest_convs = last_by_offset(seen_convs, "conversion_id")
    assert {cid: normalise_conversion(c) for cid, c in latest_convs.items()} == {
        cid: normalise_conversion(c) for cid, c in want_convs.items()
    }
    assert latest_convs == convs.latest_by_id()
    print(  # noqa: T201
        f"{len(events)} events; kcat read {len(seen_tallies)} tally records ({len(by_key)} campaigns) "
        f"and {len(seen_convs)} conversion records ({len(latest_convs)} conversions)"
    )
