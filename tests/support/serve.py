"""For the tests of `attribution serve`: the server as a real child process (a free 127.0.0.1 port,
the engine's config as its environment, /readyz awaited with a deadline, SIGTERM and exit code 0 at
the end, its log in a temporary file that is removed afterwards), and a scenario that a real worker
has published for it to follow."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from attribution.core.model import Event
from attribution.devkit.embedded import free_port
from attribution.infra.config import Config
from tests.support.kafka import Engine, TopicReader, engine_config, env_of
from tests.support.reference import (
    normalise_conversion,
    normalise_day,
    normalise_now,
    normalise_tally,
    reference,
    subscriptions,
)
from tests.support.scenarios import DAY_MS, PROJECT, click, goal, send, settings, web

T = TypeVar("T")

#: a token that passes ATTRIBUTION_API_TOKEN's 16-character minimum and is easy to find in a log
TOKEN = "s3rve-t0ken-that-must-never-be-logged"


def serve_env(config: Config, port: int, **settings: str) -> dict[str, str]:
    """The environment of `attribution serve` on 127.0.0.1:``port`` for ``config`` (plus ``settings``:
    ATTRIBUTION_* or other variable names, e.g. ``ATTRIBUTION_API_TOKEN``)."""
    env = env_of(config)
    del env["ATTRIBUTION_METRICS_PORT"]  # a worker's setting: serve has /metrics on its API port
    env.update({"ATTRIBUTION_API_HOST": "127.0.0.1", "ATTRIBUTION_API_PORT": str(port), **settings})
    return env


class PortTaken(AssertionError):
    """serve refused its port: another process listens there."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is taken")


class Serve:
    """One `attribution serve` process; ``stop()`` ends it with SIGTERM and checks it exited 0."""

    def __init__(self, env: Mapping[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        fd, name = tempfile.mkstemp(prefix="serve-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "attribution", "serve"],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest is not its stop signal
            )
        self.token = env.get("ATTRIBUTION_API_TOKEN")
        self.exit_code: int | None = None

    def log(self) -> str:
        """What the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def client(self, token: str | None = None, timeout_s: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll /readyz until 200; fail with the log if the process exits or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                code = self.process.poll()
                if code == 2 and "bad setting ATTRIBUTION_API_PORT: cannot listen" in self.log():
                    raise PortTaken(self.port)
                assert code is None, f"serve exited with {code} before ready:\n{self.log()}"
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        return
                assert time.monotonic() < deadline, f"serve not ready within {timeout_s} s:\n{self.log()}"
                time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> str:
        """SIGTERM, wait, assert exit code 0; returns the whole log. Idempotent."""
        if self.exit_code is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"serve did not stop within {timeout_s} s of SIGTERM:\n{self.log()}"
                ) from None
        assert self.exit_code == 0, f"serve exited with {self.exit_code}:\n{self.log()}"
        return self.log()

    def close(self) -> None:
        """Kill the process if it still runs and remove the log (after a failed test, too)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def serving(
    config: Config, *, port: int | None = None, ready: bool = True, timeout_s: float = 60.0, **settings: str
) -> Iterator[Serve]:
    """`attribution serve` for ``config`` on ``port`` (a free one by default); ready (unless
    ``ready=False``) when entered, stopped with SIGTERM and exit code 0 when left normally, killed
    and cleaned up always. ``settings``: more environment variables, e.g. ATTRIBUTION_API_TOKEN."""
    for _ in range(3):  # a free port can be taken by another process before serve binds it
        chosen = port or free_port()
        server = Serve(serve_env(config, chosen, **settings), chosen)
        try:
            if ready:
                server.wait_ready(timeout_s)
            break
        except PortTaken:
            server.close()
            if port is not None:
                raise
        except BaseException:
            server.close()
            raise
    else:
        raise AssertionError("attribution serve found no free port in 3 attempts")
    try:
        yield server
        server.stop()
    except BaseException:
        # the log is removed below: pytest shows what a failed test wrote to stderr
        sys.stderr.write(f"--- attribution serve on port {server.port}, its log ---\n{server.log()}")
        raise
    finally:
        server.close()


# --- a scenario published by a real worker ----------------------------------------------------

T0 = int(time.time() * 1000) - 3600_000
MIN = 60_000
OTHER = "other-shop"  # a second project: its conversions are not the first one's
#: the campaigns of PROJECT in the scenario, in campaign order
CAMPAIGNS = ["c1-push", "c2-web", "c3-kakao", "c4-email", "c5-live", "c6-karte"]
KARTE = "c6-karte"  # the KARTE web-push campaign of the scenario
TIMEZONE = "Asia/Tokyo"  # PROJECT's: its subscribe sessions are counted per day in Tokyo


def karte() -> list[Event]:
    """KARTE web events of PROJECT: a web-push campaign with every counted event and its goals (a
    conversion event and a campaign goal), and visitors subscribing over three days (v4 subscribes
    and unsubscribes), so that v1 and v2 are subscribed now and both visited today."""
    c = {"campaign": KARTE, "message": "c6-m1"}
    return [
        web("w1", "push_apps_subscribe", "v1", T0 - 2 * DAY_MS, session="a0"),
        web("w2", "push_apps_subscribe", "v2", T0 - DAY_MS, session="b0"),
        web("w3", "push_apps_subscribe", "v4", T0, session="d0"),
        web("w4", "push_apps_unsubscribe", "v4", T0 + MIN, session="d0"),
        web("w5", "message_open", "v1", T0, session="a1", **c),
        web("w6", "message_open", "v2", T0, session="b1", **c),
        web("w7", "talk_message_send", "v1", T0, session="a1", **c),
        web("w8", "talk_message_send", "v2", T0, session="b1", **c),
        web("w9", "talk_message_fail", "v3", T0, session="c1", **c),
        web("w10", "talk_message_open", "v1", T0, session="a1", **c),
        web("w11", "message_click", "v1", T0 + MIN, session="a1", **c),
        web("w12", "messaeg_clicked", "v1", T0 + MIN, session="a1", **c),
        web("w13", "message_link_click", "v1", T0 + MIN, session="a1", **c),
        web(
            "w14", "signup", "v1", T0 + 5 * MIN, session="a1"
        ),  # a conversion event: goal and goal after click
        web("w15", "view_cart", "v2", T0 + 5 * MIN, session="b1"),  # c6's own goal: v2 did not click
    ]


def scenario() -> list[Event]:
    """Several campaigns and channels: sends (one failed), clicks, goals converting on both bases,
    purchases with an amount (x quantity), a goal two campaigns hold, a KARTE web-push campaign with
    subscriptions (``karte``), and a second project."""
    events: list[Event] = [
        # c1 (push; purchase is click-based): three users reached, one failed send, one click
        send("s1", "c1-push", "d1", T0, user="u1"),
        send("s2", "c1-push", "d2", T0, user="u2"),
        send("s3", "c1-push", "d3", T0, user="u3"),
        send("s4", "c1-push", "d9", T0, user="u9", status="failed"),
        click("k1", "c1-push", "d1", T0 + MIN, user="u1"),
        # c2 (web push; purchase is send-based): u1 and u4 reached, u4 clicked
        send("s5", "c2-web", "d1", T0 + 2 * MIN, user="u1", channel="web_push"),
        send("s6", "c2-web", "d4", T0 + 2 * MIN, user="u4", channel="web_push"),
        click("k2", "c2-web", "d4", T0 + 3 * MIN, user="u4", channel="web_push"),
        # c3 (KakaoTalk, send-only) and c4 (email)
        send("s7", "c3-kakao", "d5", T0, user="u5", channel="kakao"),
        send("s8", "c4-email", "d6", T0, user="u6", channel="email"),
        click("k3", "c4-email", "d6", T0 + MIN, user="u6", channel="email"),
        # c5: reached, no goal yet (the event stream test converts it)
        send("s9", "c5-live", "d7", T0, user="u7"),
        # goals: u1's purchase is held by c1 (click and send) and c2 (send)
        goal("g1", "purchase", "d1", T0 + 10 * MIN, user="u1", price="19900", qty=2),
        goal("g2", "signup", "d2", T0 + 10 * MIN, user="u2"),
        goal("g3", "purchase", "d4", T0 + 10 * MIN, user="u4", price=5000, qty=3),
        goal("g4", "signup", "d5", T0 + 10 * MIN, user="u5"),
        goal("g5", "purchase", "d6", T0 + 10 * MIN, user="u6", price="1.5", qty=4),
        goal("g6", "signup", "d6", T0 + 11 * MIN, user="u6"),
    ]
    other: list[Event] = [
        send("o1", "o1-push", "od1", T0, user="ou1"),
        goal("og1", "signup", "od1", T0 + MIN, user="ou1"),
    ]
    return events + karte() + [msgspec.structs.replace(e, project_id=OTHER) for e in other]


SETTINGS = {
    PROJECT: settings(
        campaign_goals=[{"campaign_id": KARTE, "event": "view_cart", "window_ms": DAY_MS}],
        timezone=TIMEZONE,
        visitor_days=7,
    ),
    OTHER: settings(project_id=OTHER),
}


def latest_subscriptions(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per project, {"now": its newest now-record or None, "days": {day: newest day record}} of
    subscriptions records read in topic order (the highest version per key wins)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        project = out.setdefault(r["project_id"], {"now": None, "days": {}})
        day = r.get("day")
        kept = project["days"].get(day) if day else project["now"]
        if kept is None or kept["version"] <= r["version"]:
            if day:
                project["days"][day] = r
            else:
                project["now"] = r
    return out


def normalise_subscriptions(latest: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``latest_subscriptions`` without what depends on processing, as ``reference.subscriptions``
    gives it: no versions, no day publication times, no day that has no subscribe session left."""
    return {
        project: {
            "now": normalise_now(p["now"]) if p["now"] is not None else None,
            "days": {d: normalise_day(r) for d, r in sorted(p["days"].items()) if r["subscribe_sessions"]},
        }
        for project, p in latest.items()
    }


@dataclass
class World:
    """A running worker, readers of its output topics, the events produced so far, and (once the
    test attached one) a `serve` following the topics."""

    engine: Engine
    events: list[Event]
    tallies: TopicReader
    conversions: TopicReader
    subscriptions: TopicReader
    serve: Serve = field(init=False)

    def produce(self, events: list[Event]) -> None:
        self.events += events
        self.engine.produce(events)

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until the readers hold the outputs that an independent attribution of every event
        produced so far gives (``reference``): the worker is done and its records were read. (Not
        by watermarks: the embedded broker reports the end of a partition as the base offset of
        its last batch + 1, which is short of the end when a batch holds several records.)"""
        want_tallies, want_conversions = reference(self.events, SETTINGS)
        want_subscriptions = subscriptions(self.events, SETTINGS)
        deadline = time.monotonic() + timeout_s
        while True:
            self.tallies.poll(0.05)
            self.conversions.poll(0.05)
            self.subscriptions.poll(0.05)
            tallies = {k: normalise_tally(t) for k, t in self.tallies.latest_tallies().items()}
            conversions = {i: normalise_conversion(c) for i, c in self.conversions.latest_by_id().items()}
            subs = normalise_subscriptions(latest_subscriptions(self.subscriptions.records))
            if tallies == want_tallies and conversions == want_conversions and subs == want_subscriptions:
                return
            assert time.monotonic() < deadline, (
                f"outputs not as expected within {timeout_s} s: "
                f"tallies {sorted(k for k in want_tallies if tallies.get(k) != want_tallies[k])} differ, "
                f"{len(want_conversions.keys() ^ conversions.keys())} conversions missing or extra, "
                f"subscriptions {subs} instead of {want_subscriptions}"
            )

    def topic_subscriptions(self, project: str) -> dict[str, Any]:
        """The latest subscriptions records of ``project`` read from the topic so far, as the API
        answers them: {"project_id", "now": record or None, "days": [records, newest day first]}."""
        self.subscriptions.poll(0.05)
        latest = latest_subscriptions(self.subscriptions.records).get(project, {"now": None, "days": {}})
        days = [latest["days"][d] for d in sorted(latest["days"], reverse=True)]
        return {"project_id": project, "now": latest["now"], "days": days}

    def topic_tallies(self, project: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The latest record per campaign of ``project`` read from the tallies topic so far."""
        self.tallies.poll(0.05)
        return {k: t for k, t in self.tallies.latest_tallies().items() if k[0] == project}

    def api(self) -> httpx.Client:
        """A client of the world's `serve`, with its token when it has one."""
        return self.serve.client(self.serve.token)


@contextlib.contextmanager
def running_world(kafka: str, redis_url: str) -> Iterator[World]:
    """An engine of its own with a worker (in a thread) that has published the scenario; the
    caller attaches a `serve`. The worker stops and the readers close when it is left."""
    engine = Engine(engine_config(kafka, redis_url, uuid.uuid4().hex[:8]))
    engine.put_settings(*SETTINGS.values())
    worker = engine.worker_thread()
    try:
        readers = (engine.reader("tallies"), engine.reader("conversions"), engine.reader("subscriptions"))
        world = World(engine, [], *readers)
        world.produce(scenario())
        world.settle(timeout_s=60)
        yield world
    finally:
        worker.stop()
        engine.close()


def eventually(read: Callable[[], T], ok: Callable[[T], bool], what: str, timeout_s: float = 15.0) -> T:
    """``read()`` until ``ok`` of it, within ``timeout_s``; the last value read is in the failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {value!r}"
        time.sleep(0.05)
