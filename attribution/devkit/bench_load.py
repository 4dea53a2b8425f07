"""The benchmark's backlog: a seeded, realistic mix of sends, clicks and goals, pre-encoded as JSON.

Default shape (scale 1.0): 1M sends, 150k clicks, 60k goals, 200k users with 1-3 devices, 50
campaigns over every channel, 3 conversion events, 20% of goals purchases.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from attribution.devkit.traffic import DEMO_SETTINGS

PROJECT = "bench"
CHANNELS = ("push", "web_push", "kakao", "sms", "in_app", "email")

#: The demo's three conversion events (purchase with amount x quantity, signup, push_apps_subscribe).
SETTINGS: dict[str, Any] = {**DEMO_SETTINGS, "project_id": PROJECT}

Record = tuple[str, bytes, bytes]  # (kind, key, value)


@dataclass(frozen=True)
class Shape:
    sends: int = 1_000_000
    clicks: int = 150_000
    goals: int = 60_000
    users: int = 200_000
    campaigns: int = 50

    def scaled(self, scale: float) -> Shape:
        def s(n: int) -> int:
            return max(1, int(n * scale))

        return Shape(s(self.sends), s(self.clicks), s(self.goals), s(self.users), max(1, min(50, s(50))))


def backlog(shape: Shape, start_ms: int, span_ms: int, seed: int = 1) -> list[Record]:
    """Every input record of the backlog, each topic in event-time order."""
    rng = random.Random(seed)
    devices = [rng.randint(1, 3) for _ in range(shape.users)]
    campaigns = [(f"camp-{i}", CHANNELS[i % len(CHANNELS)]) for i in range(shape.campaigns)]
    step = span_ms / shape.sends
    sends: list[tuple[int, dict[str, Any]]] = []
    for i in range(shape.sends):
        user = rng.randrange(shape.users)
        campaign, channel = campaigns[rng.randrange(len(campaigns))]
        device = f"u{user}-d{rng.randrange(devices[user])}"
        ts = start_ms + int(i * step)
        sends.append(
            (
                ts,
                {
                    "event_id": f"s{i}",
                    "project_id": PROJECT,
                    "campaign_id": campaign,
                    "message_id": f"{campaign}-m{ts // 3_600_000}",
                    "channel": channel,
                    "device_id": device,
                    "user_id": f"u{user}",
                    "ts": ts,
                    "status": "sent",
                },
            )
        )
    clicks = []
    for i in range(shape.clicks):
        _, s = sends[rng.randrange(len(sends))]
        clicks.append({**s, "event_id": f"k{i}", "ts": s["ts"] + rng.randint(1_000, 60_000)})
        clicks[-1].pop("status")
    goals = []
    for i in range(shape.goals):
        base = clicks[rng.randrange(len(clicks))] if clicks else sends[rng.randrange(len(sends))][1]
        name = (
            "purchase" if rng.random() < 0.2 else rng.choice(("signup", "push_apps_subscribe", "page_view"))
        )
        props = (
            {"price": rng.choice((9900, 19900, "4500.5")), "quantity": rng.randint(1, 3)}
            if name == "purchase"
            else {}
        )
        goals.append(
            {
                "event_id": f"g{i}",
                "project_id": PROJECT,
                "name": name,
                "device_id": base["device_id"],
                "user_id": base["user_id"],
                "ts": base["ts"] + rng.randint(1_000, 600_000),
                "properties": props,
            }
        )
    out: list[Record] = []
    for kind, values in (("sends", [s for _, s in sends]), ("clicks", clicks), ("goals", goals)):
        values.sort(key=lambda v: v["ts"])
        out += [(kind, v["user_id"].encode(), orjson.dumps(v)) for v in values]
    return out
