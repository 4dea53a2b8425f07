"""Seeded, realistic demo traffic: campaigns on every channel, users with several devices, clicks,
purchases with amount x quantity, the odd duplicate. Used by ``attribution demo`` and tests.

With ``web_share`` > 0 (0 by default: benches keep their meaning), that share of the stories are
KARTE web-push ones on the ``web_events`` topic: a permission-asking serve (message_open, clicks
and the misspelt ``messaeg_clicked``, push_apps_subscribe / push_apps_unsubscribe,
plugin_push_apps_identify), a delivery to subscribers (message_open, talk_message_send or
talk_message_fail, talk_message_open, message_click, message_link_click), page views, and web
events that are goals (purchase, signup)."""

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
#: KARTE web-push serves: asking for the permission, and delivering to those who gave it
WEB_ASK = "web-permission-ask"
WEB_DELIVERY = "web-weekly-news"
WEB_CAMPAIGNS = (WEB_ASK, WEB_DELIVERY)
SESSION_MS = 30 * 60_000  # a visitor's session id changes every half hour

Out = tuple[str, str, dict[str, Any]]  # (kind, key, value)


@dataclass(order=True)
class _Later:
    due_ms: int
    seq: int
    out: Out = field(compare=False)


class Traffic:
    """``events(now_ms, n)`` yields about ``n`` input events whose event time is around ``now_ms``."""

    def __init__(
        self,
        seed: int = 7,
        users: int = 2000,
        project: str = DEMO_PROJECT,
        late_goal_ratio: float = 0.0,
        web_share: float = 0.0,
        login_share: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.late_goal_ratio = late_goal_ratio  # share of goals that come hours after the click
        self.web_share = web_share  # share of stories that are KARTE web-push ones
        self.project = project
        self.users = [f"user-{i}" for i in range(users)]
        self.devices = {u: [f"{u}-dev{d}" for d in range(self.rng.randint(1, 3))] for u in self.users}
        # about one user in ten never logs in: their events carry no user_id, keyed by device
        self.anonymous = {u for u in self.users if self.rng.random() < 0.1}
        # identities (own generator: the sequence above stays what it was): that share of the users
        # browse anonymously until a login a few minutes after their first story, and one in five of
        # them also uses a device of another such user (a shared device)
        self.login_at: dict[str, int] = {}
        self.later: list[_Later] = []
        self.browsing: set[str] = set()
        if login_share:
            ids = random.Random(seed + 1)
            self.browsing = {u for u in self.users if u not in self.anonymous and ids.random() < login_share}
            pool = sorted(self.browsing)
            for u in pool:
                if ids.random() < 0.2:
                    other = ids.choice(pool)
                    if other != u:
                        self.devices[u].append(self.devices[other][0])
            self.login_delay_ms = {u: ids.randint(0, 5 * 60_000) for u in pool}
        self.seq = 0

    def _anonymous(self, user: str, now_ms: int) -> bool:
        """Whether ``user``'s events at ``now_ms`` carry no user id (never logged in, or not yet)."""
        if user in self.anonymous:
            return True
        if user not in self.browsing:
            return False
        login = self.login_at.setdefault(user, now_ms + self.login_delay_ms[user])
        return now_ms < login

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def events(self, now_ms: int, n: int) -> Iterator[Out]:
        emitted = 0
        while self.later and self.later[0].due_ms <= now_ms:
            yield heapq.heappop(self.later).out
            emitted += 1
        while emitted < n:
            # no draw at all without web traffic: the FlareLane-only sequence stays what it was
            if self.web_share and self.rng.random() < self.web_share:
                emitted += yield from self._web_story(now_ms)
            else:
                emitted += yield from self._story(now_ms)

    def _story(self, now_ms: int) -> Generator[Out, None, int]:
        rng = self.rng
        campaign, channel = rng.choice(list(CAMPAIGNS.items()))
        user = rng.choice(self.users)
        anonymous = self._anonymous(user, now_ms)
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

    def _web_story(self, now_ms: int) -> Generator[Out, None, int]:
        """A KARTE story of one visitor: a visit, often a serve and what follows it."""
        rng = self.rng
        user = rng.choice(self.users)
        anonymous = self._anonymous(user, now_ms)  # keyed by the visitor until it logs in
        visitor = f"{user}-web"
        key = visitor if anonymous else user
        session = f"{visitor}-s{now_ms // SESSION_MS}"

        def event(name: str, ts: int, campaign: str | None = None, **values: Any) -> Out:
            return (
                "web_events",
                key,
                {
                    "event_id": self._id("web"),
                    "project_id": self.project,
                    "event": name,
                    "visitor_id": visitor,
                    "user_id": None if anonymous else user,
                    "session_id": session,
                    "ts": ts,
                    "campaign_id": campaign,
                    "message_id": f"{campaign}-msg-{now_ms // 60_000}" if campaign else None,
                    "values": values,
                },
            )

        yield event(rng.choice(["page_view", "page_view", "view_item", "search"]), now_ms)
        count = 1
        kind = rng.random()
        if kind < 0.4:  # the permission-asking serve
            opened = event("message_open", now_ms + 100, WEB_ASK)
            yield opened
            count += 1
            if rng.random() < 0.01:
                yield opened  # an upstream duplicate: must change nothing
                count += 1
            ts = now_ms + rng.randint(500, 5000)
            if rng.random() < 0.5:
                self._defer(ts, event("message_click", ts, WEB_ASK))
                self._defer(ts, event("messaeg_clicked", ts, WEB_ASK))
            choice = rng.random()
            if choice < 0.6:
                ts += rng.randint(100, 3000)
                self._defer(ts, event("push_apps_subscribe", ts))
                if rng.random() < 0.1:  # changes their mind in the same session: still one session
                    self._defer(ts + 1000, event("push_apps_unsubscribe", ts + 1000))
                if rng.random() < 0.1:  # and once more: still one session
                    self._defer(ts + 2000, event("push_apps_subscribe", ts + 2000))
                self._defer(ts + 50, event("plugin_push_apps_identify", ts + 50, subscribed=True))
            elif choice < 0.8:
                ts += rng.randint(100, 3000)
                self._defer(ts, event("push_apps_unsubscribe", ts))
                self._defer(ts + 50, event("plugin_push_apps_identify", ts + 50, subscribed=False))
        elif kind < 0.8:  # a delivery to a subscriber
            yield event("message_open", now_ms + 100, WEB_DELIVERY)
            count += 1
            if rng.random() < 0.05:
                yield event("talk_message_fail", now_ms + 200, WEB_DELIVERY)
                yield event("plugin_push_apps_identify", now_ms + 300, subscribed=False)
                return count + 2
            yield event("talk_message_send", now_ms + 200, WEB_DELIVERY)
            count += 1
            ts = now_ms + rng.randint(1000, 20_000)
            if rng.random() < 0.7:
                self._defer(ts, event("talk_message_open", ts, WEB_DELIVERY))
                if rng.random() < 0.4:
                    ts += rng.randint(500, 5000)
                    self._defer(ts, event("message_click", ts, WEB_DELIVERY))
                    self._defer(ts + 10, event("message_link_click", ts + 10, WEB_DELIVERY))
        if rng.random() < 0.3:  # a goal from the web (the project's purchase or signup)
            ts = now_ms + rng.randint(2000, 30_000)
            if rng.random() < self.late_goal_ratio:
                ts = now_ms + rng.randint(60_000, 2 * 3600 * 1000)
            if rng.random() < 0.7:
                price = rng.choice([9900, 19900, "12000.50"])
                self._defer(ts, event("purchase", ts, price=price, quantity=rng.randint(1, 3)))
            else:
                self._defer(ts, event("signup", ts))
        return count

    def _defer(self, due_ms: int, out: Out) -> None:
        self.seq += 1
        heapq.heappush(self.later, _Later(due_ms, self.seq, out))
