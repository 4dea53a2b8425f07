"""Builders for readable test events and the seed documents' settings."""

from __future__ import annotations

from typing import Any

from attribution.core.model import Channel, Click, Goal, Send, WebEvent
from attribution.core.rules import ProjectSettings, parse_settings

DAY_MS = 24 * 3600 * 1000
PROJECT = "shop"


def settings(**overrides: Any) -> ProjectSettings:
    """Demo settings: purchase (3 days, push on click, KRW amount x quantity) and signup (1 day)."""
    doc: dict[str, Any] = {
        "project_id": PROJECT,
        "version": 1,
        "conversion_events": [
            {
                "name": "purchase",
                "window_ms": 3 * DAY_MS,
                "basis": {"push": "click", "web_push": "send"},
                "purchase": {"amount_key": "price", "quantity_key": "qty", "currency": "KRW"},
            },
            {"name": "signup", "window_ms": DAY_MS},
        ],
    }
    doc.update(overrides)
    return parse_settings(doc)


def send(
    eid: str,
    campaign: str,
    device: str,
    ts: int,
    user: str | None = None,
    channel: str = "push",
    message: str | None = None,
    status: str = "sent",
) -> Send:
    return Send(
        event_id=eid,
        project_id=PROJECT,
        campaign_id=campaign,
        message_id=message or f"{campaign}-m1",
        channel=Channel(channel),
        device_id=device,
        user_id=user,
        ts=ts,
        status=status,  # type: ignore[arg-type]
    )


def click(
    eid: str,
    campaign: str,
    device: str,
    ts: int,
    user: str | None = None,
    channel: str = "push",
    message: str | None = None,
) -> Click:
    return Click(
        event_id=eid,
        project_id=PROJECT,
        campaign_id=campaign,
        message_id=message or f"{campaign}-m1",
        channel=Channel(channel),
        device_id=device,
        user_id=user,
        ts=ts,
    )


def goal(eid: str, name: str, device: str, ts: int, user: str | None = None, **props: Any) -> Goal:
    return Goal(
        event_id=eid, project_id=PROJECT, name=name, device_id=device, user_id=user, ts=ts, properties=props
    )


def web(
    eid: str,
    event: str,
    visitor: str,
    ts: int,
    user: str | None = None,
    session: str = "s1",
    campaign: str | None = None,
    message: str | None = None,
    **values: Any,
) -> WebEvent:
    """A KARTE web event of ``visitor`` (keyed by ``user`` when given) in ``session``."""
    return WebEvent(
        event_id=eid,
        project_id=PROJECT,
        event=event,
        visitor_id=visitor,
        user_id=user,
        session_id=session,
        ts=ts,
        campaign_id=campaign,
        message_id=message,
        values=values,
    )
