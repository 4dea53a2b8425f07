"""The commands a newcomer runs: `attribution demo` (what `make run` runs) and `attribution tally`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import orjson
import pytest

from tests.support.kafka import Engine, engine_config, env_of
from tests.support.scenarios import PROJECT, goal, send, settings

pytestmark = pytest.mark.integration


def test_demo_creates_topics_loads_settings_and_shows_live_tallies(
    kafka_bootstrap: str, redis_url: str
) -> None:
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8])
    env = env_of(config)
    done = subprocess.run(
        [sys.executable, "-m", "attribution.cli", "demo", "--duration", "15", "--rate", "400"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "demo settings loaded for project demo-shop" in out
    last_table = out.rsplit("live tallies", 1)[1]
    rows = [
        line.split() for line in last_table.splitlines() if line.startswith(("spring-sale", "cart-reminder"))
    ]
    assert rows and all(int(r[1]) > 0 for r in rows), last_table


def test_tally_command_prints_the_campaign_from_redis(kafka_bootstrap: str, redis_url: str) -> None:
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))
    engine.put_settings(settings())
    worker = engine.worker_thread()
    try:
        engine.produce(
            [send("t-s", "tc", "t-d", 1000, user="t-u"), goal("t-g", "signup", "t-d", 2000, user="t-u")]
        )
        tallies = engine.reader("tallies")
        tallies.until(
            lambda recs: any(
                r["campaign_id"] == "tc" and r["events"]["signup"]["send"]["conversions"] for r in recs
            ),
            what="tally of tc",
        )
    finally:
        worker.stop()
        engine.close()
    env = {**os.environ, **env_of(engine.config)}
    done = subprocess.run(
        [sys.executable, "-m", "attribution.cli", "tally", PROJECT, "tc"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    tally = orjson.loads(done.stdout)
    assert (
        tally["sends"],
        tally["events"]["signup"]["send"]["conversions"],
        tally["events"]["signup"]["rate"],
    ) == (1, 1, 1.0)
