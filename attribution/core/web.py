"""KARTE web events: what each event name means for a campaign's report and for subscriptions.

Every web event is a visit of its user key at ``ts``. A few names are also part of a web-push
serve (``campaign_id``) or change the visitor's web-push permission:

=============================================  ==============================================================
event                                          effect
=============================================  ==============================================================
``message_open``                               a send of the serve: ``sends`` (the report's sends), a
                                               send-basis touch; not reduced by push-service failures
``talk_message_send``                          ``accepted`` by the push service (not a send)
``talk_message_fail``                          ``failed``
``talk_message_open``                          ``displayed``
``message_click``                              a click: ``clicks`` (the report's clicks), a click-basis touch
``messaeg_clicked``                            KARTE's own spelling: ``clicked_alias`` only, never a click
``message_link_click``                         ``link_clicks``
``push_apps_subscribe`` / ``..._unsubscribe``  permission on / off
``plugin_push_apps_identify``                  ``values.subscribed`` (a bool): the current permission
anything else                                  a visit only
=============================================  ==============================================================

A web event whose name is a conversion event or a campaign goal of the project is also a goal, its
``values`` read like a goal's ``properties``.
"""

from __future__ import annotations

from attribution.core.model import Channel, Click, Goal, Send, WebEvent

OPEN = "message_open"
FAIL = "talk_message_fail"
CLICK = "message_click"
SUBSCRIBE = "push_apps_subscribe"
UNSUBSCRIBE = "push_apps_unsubscribe"
IDENTIFY = "plugin_push_apps_identify"
#: events counted in a campaign's tally, and nothing more
COUNTED: dict[str, str] = {
    "talk_message_send": "accepted",
    "talk_message_open": "displayed",
    "messaeg_clicked": "clicked_alias",
    "message_link_click": "link_clicks",
}
#: events of a serve: they must name their campaign
SERVE_EVENTS: frozenset[str] = frozenset({OPEN, FAIL, CLICK, *COUNTED})


def problem(ev: WebEvent) -> str | None:
    """Why ``ev`` cannot be used (a dead letter's reason), or None."""
    if ev.event in SERVE_EVENTS and ev.campaign_id is None:
        return f"{ev.event} needs campaign_id"
    return None


def permission(ev: WebEvent) -> bool | None:
    """The permission ``ev`` says the visitor has now, or None when it says nothing about it."""
    if ev.event == SUBSCRIBE:
        return True
    if ev.event == UNSUBSCRIBE:
        return False
    if ev.event == IDENTIFY:
        subscribed = ev.values.get("subscribed")
        if isinstance(subscribed, bool):
            return subscribed
    return None


def _message(ev: WebEvent) -> str:
    # a serve without message ids: every message_open is its own message (the report counts each)
    return ev.message_id or ev.event_id


def as_send(ev: WebEvent) -> Send:
    """``message_open`` (sent) or ``talk_message_fail`` (failed) as a web-push send."""
    return Send(
        event_id=ev.event_id,
        project_id=ev.project_id,
        campaign_id=ev.campaign_id or "",
        message_id=_message(ev),
        channel=Channel.WEB_PUSH,
        device_id=ev.visitor_id,
        user_id=ev.user_id,
        ts=ev.ts,
        status="failed" if ev.event == FAIL else "sent",
    )


def as_click(ev: WebEvent) -> Click:
    return Click(
        event_id=ev.event_id,
        project_id=ev.project_id,
        campaign_id=ev.campaign_id or "",
        message_id=_message(ev),
        channel=Channel.WEB_PUSH,
        device_id=ev.visitor_id,
        user_id=ev.user_id,
        ts=ev.ts,
    )


def as_goal(ev: WebEvent) -> Goal:
    return Goal(
        event_id=ev.event_id,
        project_id=ev.project_id,
        name=ev.event,
        device_id=ev.visitor_id,
        user_id=ev.user_id,
        ts=ev.ts,
        properties=ev.values,
    )
