"""KARTE web push end to end (/tmp/k/karte-spec.md): one worker over a real broker and Redis, one
compact scenario touching every rule, the final tallies and subscriptions records compared with the
independent reference."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest

from attribution.core.model import Event
from attribution.core.rules import ProjectSettings
from tests.conftest import RUNTIMES
from tests.support.kafka import Engine, engine_config
from tests.support.outcome import assert_exact, settled
from tests.support.reference import normalise_day, normalise_now, subscriptions
from tests.support.scenarios import DAY_MS, PROJECT, send, settings, web

pytestmark = pytest.mark.integration
MIN = 60_000
HOUR = 60 * MIN
SEC = 1000

KARTE: ProjectSettings = settings(
    campaign_goals=[{"campaign_id": "kc", "event": "push_apps_subscribe", "window_ms": HOUR}],
    visitor_days=3,
    timezone="Asia/Tokyo",
)


def tokyo_midnight() -> tuple[int, str, str]:
    """(ms, the day before, the day after) of the latest midnight in Tokyo (15:00 UTC) at least a day ago."""
    now = datetime.now(UTC) - timedelta(days=1)
    midnight = now.replace(hour=15, minute=0, second=0, microsecond=0)
    if midnight > now:
        midnight -= timedelta(days=1)
    after = (midnight + timedelta(hours=9)).date()
    return int(midnight.timestamp() * 1000), (after - timedelta(days=1)).isoformat(), after.isoformat()


M, BEFORE, AFTER = tokyo_midnight()


def scenario() -> list[Event]:
    """Every KARTE rule once, in arrival order (within grace of each other where it is shuffled)."""
    return [
        # v3: identified as subscribed four days ago and not seen since: subscribed, not recent
        web("v3-id", "plugin_push_apps_identify", "v3", M - 4 * DAY_MS, subscribed=True),
        # v1: served, a copy of the serve, accepted, displayed, clicked, alias, link: campaign kc
        web("v1-o1", "message_open", "v1", M - 20 * MIN, campaign="kc", message="m1"),
        web("v1-o2", "message_open", "v1", M - 20 * MIN + SEC, campaign="kc", message="m1"),  # a copy
        web("v1-a", "talk_message_send", "v1", M - 20 * MIN, campaign="kc", message="m1"),
        web("v1-d", "talk_message_open", "v1", M - 19 * MIN, campaign="kc", message="m1"),
        web("v1-k", "message_click", "v1", M - 18 * MIN, campaign="kc", message="m1"),
        web("v1-x", "messaeg_clicked", "v1", M - 18 * MIN, campaign="kc", message="m1"),
        web("v1-l", "message_link_click", "v1", M - 18 * MIN + SEC, campaign="kc", message="m1"),
        web("v1-l", "message_link_click", "v1", M - 18 * MIN + SEC, campaign="kc", message="m1"),  # dup
        # v1 buys (a web event that is the project's purchase goal): kc credited on both bases
        web("v1-buy", "purchase", "v1", M - 15 * MIN, price=19900, qty=2),
        # u2 (visitor v2, logged in): served, never clicked
        web("u2-o", "message_open", "v2", M - 20 * MIN, user="u2", campaign="kc", message="m1"),
        # vf: two failed serves of one message (one failure), one of another; never a send
        web("vf-f1", "talk_message_fail", "vf", M - 20 * MIN, campaign="kc", message="m1"),
        web("vf-f2", "talk_message_fail", "vf", M - 20 * MIN + SEC, campaign="kc", message="m1"),
        web("vf-f3", "talk_message_fail", "vf", M - 20 * MIN, campaign="kc", message="m2"),
        # v1 subscribes then unsubscribes in session a (before midnight in Tokyo): one session
        web("v1-s1", "push_apps_subscribe", "v1", M - 10 * MIN, session="a"),
        web("v1-u1", "push_apps_unsubscribe", "v1", M - 9 * MIN, session="a"),
        # u2 subscribes twice in one session: one session; the campaign goal on send basis only
        web("u2-s2", "push_apps_subscribe", "v2", M - 4 * MIN, user="u2", session="a"),
        web("u2-s1", "push_apps_subscribe", "v2", M - 5 * MIN, user="u2", session="a"),  # earlier, later
        # v4: subscribes, then identify says no; an identify with a string changes nothing
        web("v4-s", "push_apps_subscribe", "v4", M - 3 * MIN, session="z"),
        web("v4-id", "plugin_push_apps_identify", "v4", M - 2 * MIN, subscribed=False),
        web("v4-id2", "plugin_push_apps_identify", "v4", M - MIN, subscribed="true"),
        # past midnight in Tokyo: v1 subscribes again in session b (the next day)
        web("v1-s2", "push_apps_subscribe", "v1", M + 30 * MIN, session="b"),
        # v5: the newer permission (off) arrives first
        web("v5-u", "push_apps_unsubscribe", "v5", M + 31 * MIN + 20 * SEC),
        web("v5-s", "push_apps_subscribe", "v5", M + 31 * MIN, session="c"),
        # campaign kd, served by FlareLane and by KARTE, a signup of the same user key from the web
        send("kd-s", "kd", "d6", M + 32 * MIN, user="u6", channel="web_push"),
        web("kd-o", "message_open", "v6", M + 32 * MIN, user="u6", campaign="kd"),
        web("kd-g", "signup", "v6", M + 33 * MIN, user="u6"),
        # an unknown event: a visit only, and the project clock
        web("v7-pv", "page_view", "v7", M + 40 * MIN, campaign="kd"),
    ]


@pytest.fixture(scope="module", params=RUNTIMES)
def engine(request: pytest.FixtureRequest, kafka_bootstrap: str, redis_url: str) -> Iterator[Engine]:
    eng = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], runtime=request.param))
    eng.put_settings(KARTE)
    yield eng
    eng.close()


def test_karte_rules_end_to_end_equal_the_reference(engine: Engine, redis_url: str) -> None:
    events = scenario()
    tallies, convs = engine.reader("tallies"), engine.reader("conversions")
    subs, dlq = engine.reader("subscriptions"), engine.reader("dlq")
    worker = engine.worker()
    try:
        engine.produce(events)
        # dead letters: a serve without campaign, a web event without visitor_id
        engine.produce([web("bad-o", "message_open", "v8", M + 35 * MIN)])
        no_visitor = msgspec.to_builtins(web("bad-v", "page_view", "v9", M + 50 * MIN))
        del no_visitor["visitor_id"]
        engine.produce_raw("web_events", b"v9", orjson.dumps(no_visitor))
        dlq.until(lambda recs: len(recs) >= 2, what="two dead letters")
        settled(engine, redis_url, tallies, convs)
        subs.read_to_end()
    finally:
        worker.stop()

    # tallies (every campaign, the four new counts) and conversions: exactly the reference's
    assert_exact(events, KARTE, tallies, convs)
    kc = tallies.latest_tallies()[(PROJECT, "kc")]
    assert {k: kc[k] for k in ("sends", "failed", "accepted", "displayed", "clicks", "clicked_alias")} == {
        "sends": 2,
        "failed": 2,
        "accepted": 1,
        "displayed": 1,
        "clicks": 1,
        "clicked_alias": 1,
    }
    assert kc["link_clicks"] == 1
    goal = kc["events"]["push_apps_subscribe"]
    assert (goal["primary"], goal["send"]["conversions"], goal["click"]["conversions"]) == ("send", 2, 1)

    # subscriptions: the last record of each key
    want = subscriptions(events, {PROJECT: KARTE})[PROJECT]
    latest = subs.latest_subscriptions()
    # the last record of every key (what compaction keeps) is its newest version, here and in tallies
    assert subs.last_by_key() == latest
    last_tallies = {(r["project_id"], r["campaign_id"]): r for r in tallies.last_by_key().values()}
    assert last_tallies == tallies.latest_tallies()
    assert normalise_now(latest[PROJECT]) == want["now"]
    assert latest[PROJECT]["as_of_ts"] == M + 40 * MIN  # the dead letters moved no clock
    assert want["now"]["today"] == AFTER
    assert (want["now"]["subscribed_now"], want["now"]["subscribed_recent_visitors"]) == (3, 2)
    days = {k.split(":", 1)[1]: normalise_day(r) for k, r in latest.items() if k != PROJECT}
    assert {d: r for d, r in days.items() if r["subscribe_sessions"]} == want["days"]
    assert {d: r["subscribe_sessions"] for d, r in want["days"].items()} == {BEFORE: 3, AFTER: 2}
    assert all(r["day"] == d and r["project_id"] == PROJECT for d, r in days.items())
    assert set(subs.keys) >= {PROJECT, f"{PROJECT}:{BEFORE}", f"{PROJECT}:{AFTER}"}

    errors = {orjson.loads(d["raw"])["event_id"]: d for d in dlq.records}
    assert set(errors) == {"bad-o", "bad-v"}
    assert errors["bad-o"]["error"].startswith("message_open needs campaign_id")
    assert errors["bad-o"]["topic"] == engine.config.topic("web_events")
    assert "visitor_id" in errors["bad-v"]["error"]
    assert errors["bad-v"]["key"] == "v9"
