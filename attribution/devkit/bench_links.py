"""The identity bench: a backlog with KARTE web events and anonymous devices that log in, caught up
with identities on and off, so the table shows what the merge through the ``identity`` topic costs.

From the regular backlog (``bench_load``): sends and clicks of web-push campaigns become KARTE
``message_open`` / ``message_click`` web events (each first open also a ``push_apps_subscribe``), and
30% of the users browse anonymously until a login time: their events before it carry no user id
(keyed by the device), and their first event after it links the device to them.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from attribution.devkit.bench_load import Record, Shape, backlog

ANONYMOUS_SHARE = 0.3


def _anonymous_until(user: str, start_ms: int, span_ms: int) -> int | None:
    """The user's login time if it browses anonymously before it, else None."""
    h = zlib.crc32(user.encode())
    if (h % 1000) / 1000 >= ANONYMOUS_SHARE:
        return None
    return start_ms + (h // 1000 % 1000) * span_ms // 1000


def identity_backlog(shape: Shape, start_ms: int, span_ms: int) -> list[Record]:
    """Every record of the identity backlog; the same events whether identities are on or off."""
    out: list[tuple[int, Record]] = []
    subscribed: set[str] = set()
    for kind, _, value in backlog(shape, start_ms, span_ms, seed=2):
        ev: dict[str, Any] = orjson.loads(value)
        login = _anonymous_until(ev["user_id"], start_ms, span_ms)
        if login is not None and ev["ts"] < login:
            ev["user_id"] = None
        web = kind != "goals" and ev["channel"] == "web_push"
        if web:
            device = ev["device_id"]
            out.append((ev["ts"], _web(ev, "message_open" if kind == "sends" else "message_click")))
            if kind == "sends" and device not in subscribed:
                subscribed.add(device)
                sub = _web({**ev, "event_id": f"sub-{ev['event_id']}"}, "push_apps_subscribe")
                out.append((ev["ts"], sub))
            continue
        key = ev["user_id"] or ev["device_id"]
        out.append((ev["ts"], (kind, key.encode(), orjson.dumps(ev))))
    out.sort(key=lambda o: o[0])  # every topic in event-time order, as producers would write them
    return [r for _, r in out]


def _web(ev: dict[str, Any], name: str) -> Record:
    visitor = ev["device_id"]
    record = {
        "event_id": ev["event_id"],
        "project_id": ev["project_id"],
        "event": name,
        "visitor_id": visitor,
        "user_id": ev["user_id"],
        "session_id": f"{visitor}-{ev['ts'] // 1_800_000}",
        "ts": ev["ts"],
        "campaign_id": ev["campaign_id"] if name != "push_apps_subscribe" else None,
        "message_id": ev["message_id"] if name != "push_apps_subscribe" else None,
    }
    return ("web_events", (ev["user_id"] or visitor).encode(), orjson.dumps(record))
