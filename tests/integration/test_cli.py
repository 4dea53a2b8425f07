"""The commands a newcomer runs: `attribution demo` (what `make run` runs) and `attribution tally`."""

from __future__ import annotations

import os
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
from tests.support.scenarios import PROJECT, goal, send, settings

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
