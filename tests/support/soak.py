"""The chaos soak: seeded traffic into the inputs while 2-3 `attribution worker` processes share the
consumer group, get SIGKILLed at random points and replaced, so partitions keep moving. At the end
the outputs are compared with the independent reference implementation.

Used by ``tests/integration/test_soak.py`` (a short run in ``make test``, a long one in ``make soak``).
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from attribution.core.model import Click, Event, Goal, Send, WebEvent
from attribution.core.rules import ProjectSettings, parse_settings
from attribution.devkit.traffic import DEMO_PROJECT, WEB_ASK, Traffic
from tests.support.kafka import Engine

TYPES: dict[str, type[Send] | type[Click] | type[Goal] | type[WebEvent]] = {
    "sends": Send,
    "clicks": Click,
    "goals": Goal,
    "web_events": WebEvent,
}
GRACE_MS = 60_000
LOGIN_SHARE = 0.3  # users who browse anonymously before they log in (identity links, shared devices)
WEB_SHARE = 0.3  # share of the stories that are KARTE web-push ones
EVENTS_PER_S = 50  # of event time, in ``scenario``

SOAK_SETTINGS: ProjectSettings = parse_settings(
    {
        "project_id": DEMO_PROJECT,
        "version": 1,
        "conversion_events": [
            {
                "name": "purchase",
                "window_ms": 30 * 60_000,
                "basis": {"push": "click", "web_push": "click"},
                "purchase": {"amount_key": "price", "quantity_key": "quantity", "currency": "KRW"},
            },
            {"name": "signup", "window_ms": 10 * 60_000},
            {"name": "push_apps_subscribe", "window_ms": 5 * 60_000, "basis": {"web_push": "send"}},
        ],
        # KARTE: the permission-asking serve's own goal (replaces the project's push_apps_subscribe
        # there: 30 min, both bases); visitors of today only; days cut in Tokyo
        "campaign_goals": [
            {"campaign_id": WEB_ASK, "event": "push_apps_subscribe", "window_ms": 30 * 60_000}
        ],
        "visitor_days": 1,
        "timezone": "Asia/Tokyo",
    }
)


def soak_start(n_events: int) -> int:
    """An event-time start putting midnight in Tokyo (15:00 UTC) in the middle of ``n_events`` of
    ``scenario``, at least a day ago: the day cut and visitor_days matter."""
    now = datetime.now(UTC) - timedelta(days=1)
    midnight = now.replace(hour=15, minute=0, second=0, microsecond=0)
    if midnight > now:
        midnight -= timedelta(days=1)
    return int(midnight.timestamp() * 1000) - n_events // EVENTS_PER_S * 1000 // 2


def scenario(n_events: int, seed: int, start_ms: int, users: int) -> tuple[list[Event], list[Event]]:
    """(distinct events, arrival order). Arrival order adds upstream duplicates (about 2%), goals
    moved before their touch in event time (3%), and a shuffle within half the grace, so goals often
    arrive before the sends and clicks they convert."""
    rng = random.Random(seed)
    traffic = Traffic(
        seed=seed, users=users, late_goal_ratio=0.2, web_share=WEB_SHARE, login_share=LOGIN_SHARE
    )
    events: list[Event] = []
    now = start_ms
    while len(events) < n_events:
        for k, _, v in traffic.events(now, EVENTS_PER_S):
            event = msgspec.convert(v, TYPES[k])
            if isinstance(event, Goal) and rng.random() < 0.03:
                event = msgspec.structs.replace(event, ts=event.ts - 10_000)
            events.append(event)
        now += 1000
    events = events[:n_events]
    arrivals = [(e.ts + rng.randint(0, GRACE_MS // 2), i, e) for i, e in enumerate(events)]
    arrivals += [(e.ts + rng.randint(0, GRACE_MS // 2), -1, e) for e in rng.sample(events, n_events // 50)]
    ordered = [e for _, _, e in sorted(arrivals, key=lambda a: (a[0], a[1]))]
    return events, ordered


@dataclass
class ChaosReport:
    events: int = 0
    kills: int = 0
    started: int = 0
    rebalances: int = 0
    exit_codes: list[int] = field(default_factory=list)


class Chaos:
    """Keeps ``low``..``high`` workers alive, SIGKILLing one every ``every_s`` (jittered)."""

    def __init__(self, engine: Engine, seed: int, low: int = 2, high: int = 3, every_s: float = 3.0) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.low, self.high, self.every_s = low, high, every_s
        self.workers: list[subprocess.Popen[bytes]] = []
        self.report = ChaosReport()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for _ in range(self.low):
            self._spawn()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self.workers.append(self.engine.worker_process())
        self.report.started += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s * self.rng.uniform(0.5, 1.5)):
            self.kill_one()
            while len(self.workers) < self.rng.randint(self.low, self.high):
                self._spawn()

    def kill_one(self) -> None:
        for w in [w for w in self.workers if w.poll() is not None]:  # died on its own: a failure
            self.report.exit_codes.append(int(w.returncode))
            self.workers.remove(w)
        if not self.workers:
            return
        victim = self.rng.choice(self.workers)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.workers.remove(victim)
        self.report.kills += 1

    def wait_for_kills(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.report.kills < n:
            assert time.monotonic() < deadline, f"only {self.report.kills} kills in {timeout_s:.0f} s"
            time.sleep(0.2)

    def calm(self) -> None:
        """Stop killing; leave ``low`` workers running to finish the work."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        while len(self.workers) < self.low:
            self._spawn()

    def stop(self) -> None:
        self._stop.set()
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                code = w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
                code = w.wait(10)
            self.report.exit_codes.append(int(code))
        self.workers.clear()
        self.report.rebalances = sum(
            Path(log).read_text(errors="replace").count(" assigned [") for log in self.engine.logs
        )


def produce_over(engine: Engine, ordered: list[Event], seconds: float, tick: Callable[[], object]) -> None:
    """Produce ``ordered`` spread over about ``seconds`` (live traffic while chaos happens)."""
    chunks = max(1, int(seconds * 4))
    size = max(1, len(ordered) // chunks + 1)
    for i in range(0, len(ordered), size):
        started = time.monotonic()
        engine.produce(ordered[i : i + size])
        tick()
        time.sleep(max(0.0, 0.25 - (time.monotonic() - started)))
