"""The commands a newcomer runs: `attribution demo` (what `make run` runs) and `attribution tally`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

import httpx
import orjson
import pytest

from tests.support.kafka import Engine, engine_config, env_of
from tests.support.reference import local_day
from tests.support.scenarios import DAY_MS, PROJECT, goal, send, settings, web
from tests.support.serve import latest_subscriptions

pytestmark = pytest.mark.integration


def test_demo_creates_topics_loads_settings_and_shows_live_tallies(
    kafka_bootstrap: str, redis_url: str
) -> None:
    """`make run` in short: the demo prints the live page's address once serve is ready; while the
    demo runs that address answers /readyz, the page and the demo project's campaigns; when the demo
    ends serve is stopped with it, and the terminal table shows the demo campaigns."""
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8])
    demo = subprocess.Popen(
        [sys.executable, "-m", "attribution.cli", "demo", "--duration", "20", "--rate", "400"],
        env=env_of(config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its worker and serve too: killed as a group if it does not stop
    )
    out, err = Lines(demo.stdout), Lines(demo.stderr)
    try:
        page = out.wait_for("live campaign page: ", timeout_s=90, alive=demo).split()[3]
        assert page.startswith("http://127.0.0.1:"), page
        with httpx.Client(base_url=page, timeout=5) as api:
            assert api.get("/readyz").status_code == 200
            home = api.get("/")
            assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
            campaigns = poll_campaigns(api, demo)
            assert demo.poll() is None, "the API must answer while the demo runs"
        assert {"spring-sale", "cart-reminder"} & {c["campaign_id"] for c in campaigns}, campaigns
        assert demo.wait(120) == 0, err.finish()[-3000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        err.finish()
    output = out.finish()
    assert "demo settings loaded for project demo-shop" in output
    last_table = output.rsplit("live tallies", 1)[1]
    rows = [
        line.split() for line in last_table.splitlines() if line.startswith(("spring-sale", "cart-reminder"))
    ]
    assert rows and all(int(r[1]) > 0 for r in rows), last_table
    with pytest.raises(httpx.TransportError):  # serve stopped with the demo
        httpx.get(page + "readyz", timeout=2)


class Lines:
    """A child's output stream, read line by line in a thread (so the child never blocks on it)."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                self.lines.append(line.decode(errors="replace"))

    def wait_for(self, prefix: str, timeout_s: float, alive: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + timeout_s
        while not (found := [line for line in self.lines if line.startswith(prefix)]):
            assert alive.poll() is None, f"exited {alive.returncode} before {prefix!r}: {self.text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {prefix!r} within {timeout_s} s: {self.text()[-2000:]}"
            time.sleep(0.1)
        return found[0]

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self) -> str:
        """All of it, once the child closed the stream (it exited)."""
        self.thread.join(10)
        return self.text()


def poll_campaigns(api: httpx.Client, demo: subprocess.Popen[bytes], timeout_s: float = 45) -> list[Any]:
    """The demo project's campaign tallies from the API, once it has some with sends."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = api.get("/v1/projects/demo-shop/campaigns")
        assert answer.status_code in (200, 404), answer.text  # 404: no tally of the project yet
        if answer.status_code == 200:
            body = answer.json()
            assert body["project_id"] == "demo-shop"
            if any(c["sends"] for c in body["campaigns"]):
                return list(body["campaigns"])
        assert demo.poll() is None, "the demo ended before the API had tallies"
        assert time.monotonic() < deadline, f"no demo tallies from the API within {timeout_s} s"
        time.sleep(0.2)


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
    tally = orjson.loads(tally_command(engine, PROJECT, "tc", "--json"))
    assert (
        tally["sends"],
        tally["events"]["signup"]["send"]["conversions"],
        tally["events"]["signup"]["rate"],
    ) == (1, 1, 1.0)
    report = tally_command(engine, PROJECT, "tc").splitlines()  # for people: a report
    assert report[:2] == [f"{PROJECT} / tc", f"version {tally['version']}, as of 1970-01-01T00:00:02.000Z"]
    rows = columns(report)
    assert rows["goal"] == ["goals", "goals after click", "rate (primary)", "revenue", "revenue after click"]
    assert rows["signup"] == ["1", "0", "100.0% (send)", "-", "-"]
    assert (rows["sends"], rows["accepted"], rows["link_clicks"]) == (["1"], ["0"], ["0"])


def columns(report: list[str]) -> dict[str, list[str]]:
    """The lines of a report as cells (2 spaces apart or more), by their first cell."""
    cells = [re.split(r"\s{2,}", line.strip()) for line in report if line.strip()]
    return {row[0]: row[1:] for row in cells}


def tally_command(engine: Engine, *args: str) -> str:
    """`attribution tally ARGS` for ``engine``'s Redis: its output (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "attribution.cli", "tally", *args],
        env={**os.environ, **env_of(engine.config)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


HOUR = 3600_000
T = 1_704_844_800_000  # 2024-01-10 00:00 UTC, 09:00 in Tokyo


def test_tally_command_prints_the_karte_report_and_the_subscriptions_of_a_project(
    kafka_bootstrap: str, redis_url: str
) -> None:
    """What `attribution tally` prints is what the worker published last: a KARTE campaign's counts
    and goals, and with --subscriptions the project's now-record and its days, newest first."""
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))
    goals = [{"campaign_id": "wk", "event": "view_cart", "window_ms": DAY_MS}]
    engine.put_settings(settings(campaign_goals=goals, timezone="Asia/Tokyo", visitor_days=2))
    worker = engine.worker_thread()
    c = {"campaign": "wk", "message": "wk-m1"}
    events = [
        web("e1", "push_apps_subscribe", "v1", T - 2 * DAY_MS, session="a"),
        web("e2", "push_apps_subscribe", "v2", T - 2 * DAY_MS + HOUR, session="b"),
        web("e3", "push_apps_subscribe", "v2", T + HOUR, session="c"),
        web("e4", "message_open", "v2", T + HOUR, **c),
        web("e5", "talk_message_send", "v2", T + HOUR, **c),
        web("e6", "talk_message_open", "v2", T + HOUR, **c),
        web("e7", "message_click", "v2", T + 2 * HOUR, **c),
        web("e8", "messaeg_clicked", "v2", T + 2 * HOUR, **c),
        web("e9", "message_link_click", "v2", T + 2 * HOUR, **c),
        web("e10", "view_cart", "v2", T + 3 * HOUR),
    ]
    try:
        engine.produce(events)
        topic = engine.reader("subscriptions")
        topic.until(
            lambda recs: any(r.get("subscribed_now") == 2 and r["as_of_ts"] == T + 3 * HOUR for r in recs),
            what="the subscriptions of the project",
        )
        engine.reader("tallies").until(
            lambda recs: any(
                r["events"].get("view_cart", {}).get("click", {}).get("conversions") for r in recs
            ),
            what="the tally of wk",
        )
    finally:
        worker.stop()  # it publishes what it holds before it stops
        engine.close()
    rows = columns(tally_command(engine, PROJECT, "wk").splitlines())
    counts = {k: rows[k] for k in ("sends", "accepted", "failed", "displayed", "clicks")}
    assert counts == {"sends": ["1"], "accepted": ["1"], "failed": ["0"], "displayed": ["1"], "clicks": ["1"]}
    assert (rows["clicked_alias"], rows["link_clicks"]) == (["1"], ["1"])
    assert rows["view_cart"] == ["1", "1", "100.0% (send)", "-", "-"]  # the campaign's own goal
    # the subscriptions: the JSON is the topic's latest records, the days newest first
    written = orjson.loads(tally_command(engine, PROJECT, "--subscriptions", "--json"))
    latest = latest_subscriptions(topic.records)[PROJECT]
    days = [latest["days"][d] for d in sorted(latest["days"], reverse=True)]
    assert written == {"project_id": PROJECT, "now": latest["now"], "days": days}
    today, before = (local_day(ts, "Asia/Tokyo").isoformat() for ts in (T, T - 2 * DAY_MS))
    assert [(d["day"], d["subscribe_sessions"]) for d in days] == [(today, 1), (before, 2)]
    assert (written["now"]["subscribed_now"], written["now"]["subscribed_recent_visitors"]) == (2, 1)
    text = tally_command(engine, PROJECT, "--subscriptions").splitlines()
    assert text[0] == f"{PROJECT}: web-push subscriptions"
    rows = columns(text)
    assert (rows["subscribed now"], rows["subscribed recent visitors"]) == (["2"], ["1"])
    assert columns(text[-3:]) == {"day": ["subscribe sessions"], today: ["1"], before: ["2"]}
    assert text.index("day         subscribe sessions") == len(text) - 3  # newest first, at the end
    last_day = tally_command(engine, PROJECT, "--subscriptions", "--days", "1").splitlines()
    assert columns(last_day[-2:-1]) == {today: ["1"]}
    assert last_day[-1] == "(the newest 1 of 2 days; --days 0 shows them all)"
    nothing = subprocess.run(
        [sys.executable, "-m", "attribution.cli", "tally", "nope", "--subscriptions"],
        env={**os.environ, **env_of(engine.config)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (nothing.returncode, nothing.stderr) == (
        1,
        "attribution: no subscriptions for project nope under "
        f"ATTRIBUTION_REDIS_PREFIX={engine.config.redis_prefix}\n",
    )


def test_tally_takes_a_campaign_or_subscriptions_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    from attribution.cli import main

    assert main(["tally", PROJECT, "c1", "--subscriptions"]) == 2
    assert "Error: give CAMPAIGN or --subscriptions, not both" in capsys.readouterr().err
    assert main(["tally", PROJECT]) == 2
    assert "Error: Missing argument 'CAMPAIGN'." in capsys.readouterr().err
