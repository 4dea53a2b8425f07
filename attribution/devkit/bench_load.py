"""The benchmark's backlog: a seeded, realistic mix of sends, clicks and goals, pre-encoded as JSON;
an engine of its own for a run (``fresh``), the backlog produced into it, and the ceiling of reading it.

Default shape (scale 1.0): 1M sends, 150k clicks, 60k goals, 200k users with 1-3 devices, 50
campaigns over every channel, 3 conversion events, 20% of goals purchases.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from attribution.contract.topics import INPUTS
from attribution.core.rules import parse_settings
from attribution.devkit.traffic import DEMO_SETTINGS
from attribution.infra.config import Config
from attribution.runtime.kafka_io import create_topics
from attribution.runtime.settings_sync import publish

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

    def with_events(self, events: int, users: int) -> Shape:
        """This mix of sends, clicks and goals at ``events`` events in all, over ``users`` users."""
        scaled = self.scaled(events / (self.sends + self.clicks + self.goals))
        return replace(scaled, users=users, campaigns=self.campaigns)


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


def by_event_time(records: Sequence[Record]) -> list[Record]:
    """The topics of ``backlog`` merged into one event-time order (as the worker aligns them)."""
    kinds: dict[str, list[Record]] = {}
    for record in records:
        kinds.setdefault(record[0], []).append(record)
    return list(heapq.merge(*kinds.values(), key=lambda r: int(orjson.loads(r[2])["ts"])))


def fresh(base: Config, **extra: Any) -> Config:
    """``base`` with topics, group and Redis prefix of its own: topics created, bench settings published."""
    tag = uuid.uuid4().hex[:8]
    config = base.model_copy(
        update={
            "topic_prefix": f"bench{tag}.",
            "group_id": f"bench{tag}",
            "redis_prefix": f"bench{tag}",
            "metrics_port": 0,
            **extra,
        }
    )
    create_topics(config, config.partitions)
    publish(config, [parse_settings(SETTINGS)])
    return config


def produce(config: Config, records: list[Record]) -> float:
    """Produce ``records`` into the input topics of ``config``; returns the seconds it took."""
    producer = Producer(
        config.kafka(
            {"linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 2_000_000}
        )
    )
    started = time.perf_counter()
    for i, (kind, key, value) in enumerate(records):
        producer.produce(config.topic(kind), key=key, value=value)
        if i % 20_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return time.perf_counter() - started


def ceiling(config: Config, total: int, and_produce: bool) -> float:
    """Events/s of a bare consume(10000) + orjson.loads loop (+ one small produce per event)."""
    consumer = Consumer(
        config.kafka(
            {
                "group.id": f"ceiling-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
    )
    consumer.subscribe([config.topic(k) for k in INPUTS])
    producer = Producer(config.kafka({"linger.ms": 5})) if and_produce else None
    seen, started = 0, 0.0
    deadline = time.monotonic() + 600
    while seen < total and time.monotonic() < deadline:
        batch = consumer.consume(10_000, 0.5)
        if batch and not started:
            started = time.perf_counter()
        for m in batch:
            if m.error() is None:
                orjson.loads(m.value() or b"{}")
                seen += 1
                if producer is not None:
                    producer.produce(config.topic("dlq"), value=b'{"ok":1}')
        if producer is not None:
            producer.poll(0)
    if producer is not None:
        producer.flush(60)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed if elapsed else 0.0
