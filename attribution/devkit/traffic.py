"""Seeded, realistic demo traffic: campaigns on every channel, users with several devices, clicks,
purchases with amount x quantity, the odd duplicate. Used by ``attribution demo`` and tests."""

from __future__ import annotations

import heapq
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

DEMO_PROJECT = "demo-shop"
DAY_MS = 24 * 3600 * 1000

DEMO_SETTINGS: dict[str, Any] = {
    "project_id": DEMO_PROJECT,
    "version": 1,
    "conversion_events": [
        {
            "name": "purchase",
            "window_ms": 3 * DAY_MS,
            "basis": {"push": "click", "web_push": "click", "email": "send"},
            "purchase": {"amount_key": "price", "quantity_key": "quantity", "currency": "KRW"},
        },
        {"name": "signup", "window_ms": DAY_MS},
        {"name": "push_apps_subscribe", "window_ms": 3600 * 1000, "basis": {"web_push": "send"}},
    ],
}

CAMPAIGNS: dict[str, str] = {
    "spring-sale": "push",
    "cart-reminder": "kakao",
    "welcome-tour": "in_app",
    "new-arrivals": "web_push",
    "otp-promo": "sms",
}

Out = tuple[str, str, dict[str, Any]]  # (kind, key, value)


@dataclass(order=True)
class _Later:
    due_ms: int
    seq: int
    out: Out = field(compare=False)


class Traffic:
    """``events(now_ms, n)`` yields about ``n`` input events whose event time is around ``now_ms``."""

    def __init__(
        self, seed: int = 7, users: int = 2000, project: str = DEMO_PROJECT, late_goal_ratio: float = 0.0
    ) -> None:
        self.rng = random.Random(seed)
        self.late_goal_ratio = late_goal_ratio  # share of goals that come hours after the click
        self.project = project
        self.users = [f"user-{i}" for i in range(users)]
        self.devices = {u: [f"{u}-dev{d}" for d in range(self.rng.randint(1, 3))] for u in self.users}
        # about one user in ten never logs in: their events carry no user_id, keyed by device
        self.anonymous = {u for u in self.users if self.rng.random() < 0.1}
        self.seq = 0
        self.later: list[_Later] = []

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def events(self, now_ms: int, n: int) -> Iterator[Out]:
        emitted = 0
        while self.later and self.later[0].due_ms <= now_ms:
            yield heapq.heappop(self.later).out
            emitted += 1
        while emitted < n:
            emitted += yield from self._story(now_ms)

    def _story(self, now_ms: int) -> Generator[Out, None, int]:
        rng = self.rng
        campaign, channel = rng.choice(list(CAMPAIGNS.items()))
        user = rng.choice(self.users)
        anonymous = user in self.anonymous
        message = f"{campaign}-msg-{now_ms // 60_000}"
        count = 0
        for device in self.devices[user]:
            key = device if anonymous else user
            base = {
                "project_id": self.project,
                "campaign_id": campaign,
                "message_id": message,
                "channel": channel,
                "device_id": device,
                "user_id": None if anonymous else user,
            }
            status = "failed" if rng.random() < 0.03 else "sent"
            send = {"event_id": self._id("send"), **base, "ts": now_ms, "status": status}
            yield ("sends", key, send)
            count += 1
            if rng.random() < 0.01:
                yield ("sends", key, send)  # an upstream duplicate: must change nothing
                count += 1
            if status == "sent" and rng.random() < 0.35:
                click_ms = now_ms + rng.randint(500, 5000)
                self._defer(
                    click_ms, ("clicks", key, {"event_id": self._id("click"), **base, "ts": click_ms})
                )
                if rng.random() < 0.5:
                    delay_ms = rng.randint(500, 8000)
                    if rng.random() < self.late_goal_ratio:
                        delay_ms = rng.randint(60_000, 2 * 3600 * 1000)
                    self._goal(key, device, None if anonymous else user, click_ms + delay_ms)
        return count

    def _goal(self, key: str, device: str, user: str | None, ts: int) -> None:
        rng = self.rng
        name = rng.choices(["purchase", "signup", "push_apps_subscribe", "page_view"], [5, 2, 1, 2])[0]
        props: dict[str, Any] = {}
        if name == "purchase":
            props = {"price": rng.choice([9900, 19900, 4500, "12000.50"]), "quantity": rng.randint(1, 3)}
        goal = {
            "event_id": self._id("goal"),
            "project_id": self.project,
            "name": name,
            "device_id": device,
            "user_id": user,
            "ts": ts,
            "properties": props,
        }
        self._defer(ts, ("goals", key, goal))

    def _defer(self, due_ms: int, out: Out) -> None:
        self.seq += 1
        heapq.heappush(self.later, _Later(due_ms, self.seq, out))
