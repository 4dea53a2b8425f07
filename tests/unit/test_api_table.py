"""The read model of `attribution serve`: the newest tally (and subscriptions record) wins whatever
order the records come in, conversions are found only under their project, and a stream client that
falls behind is closed."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from attribution.api.app import _offer
from attribution.api.table import Change, ResultTable
from attribution.core.outputs import Conversion
from attribution.core.subscriptions import SubscriptionsRecord
from attribution.core.tally import TallyRecord


def tally(campaign: str, version: int, sends: int, project: str = "shop") -> bytes:
    record = TallyRecord(
        project_id=project,
        campaign_id=campaign,
        version=version,
        as_of_ts=1,
        sends=sends,
        send_users=sends,
        failed=0,
        clicks=0,
        click_users=0,
        events={},
    )
    return msgspec.json.encode(record)


def test_a_stale_tally_that_lands_last_never_replaces_the_newest() -> None:
    table = ResultTable()
    heard: list[Change] = []
    table.listen(heard.append)
    table.apply("tallies", b"shop:c1", tally("c1", 2, sends=20), 0, 1)
    table.apply("tallies", b"shop:c1", tally("c1", 1, sends=10), 0, 2)  # another worker's older one
    assert table.tally("shop", "c1") == tally("c1", 2, sends=20)
    assert [msgspec.json.decode(c.record)["version"] for c in heard] == [2]
    table.apply("tallies", b"shop:c1", tally("c1", 2, sends=20), 0, 3)  # a repeat: same answer
    table.apply("tallies", b"shop:c1", tally("c1", 3, sends=30), 0, 4)
    assert table.tally("shop", "c1") == tally("c1", 3, sends=30)


def now_record(version: int, subscribed: int, project: str = "shop") -> bytes:
    record = SubscriptionsRecord(
        project_id=project,
        version=version,
        as_of_ts=1,
        today="2024-01-10",
        timezone="Asia/Tokyo",
        visitor_days=7,
        subscribed_now=subscribed,
        subscribed_recent_visitors=subscribed,
    )
    return msgspec.json.encode(record)


def day_record(day: str, version: int, sessions: int, project: str = "shop") -> bytes:
    record = SubscriptionsRecord(
        project_id=project, day=day, version=version, as_of_ts=1, subscribe_sessions=sessions
    )
    return msgspec.json.encode(record)


def test_the_newest_subscriptions_record_wins_per_project_and_per_day() -> None:
    table = ResultTable()
    heard: list[Change] = []
    table.listen(heard.append)
    table.apply("subscriptions", b"shop", now_record(2, subscribed=20), 0, 0)
    table.apply("subscriptions", b"shop:2024-01-09", day_record("2024-01-09", 2, sessions=3), 0, 1)
    table.apply("subscriptions", b"shop:2024-01-10", day_record("2024-01-10", 5, sessions=4), 0, 2)
    table.apply("subscriptions", b"shop", now_record(1, subscribed=10), 0, 3)  # stale: landed last
    table.apply("subscriptions", b"shop:2024-01-10", day_record("2024-01-10", 4, sessions=9), 0, 4)
    # the days come newest first, each the newest version of it
    assert table.subscriptions("shop") == (
        now_record(2, subscribed=20),
        [day_record("2024-01-10", 5, sessions=4), day_record("2024-01-09", 2, sessions=3)],
    )
    assert [(c.kind, c.campaign_id) for c in heard] == [("subscriptions", "")] * 3
    table.apply("subscriptions", b"shop", now_record(3, subscribed=30), 0, 5)
    assert table.subscriptions("shop") == (
        now_record(3, subscribed=30),
        [day_record("2024-01-10", 5, 4), day_record("2024-01-09", 2, 3)],
    )
    assert heard[-1] == Change("shop", "", now_record(3, subscribed=30), "subscriptions")
    assert table.sizes() == (0, 0)  # subscriptions are neither campaigns nor conversions


def test_subscriptions_of_a_project_known_by_its_tallies_or_its_subscriptions_only() -> None:
    table = ResultTable()
    table.apply("tallies", None, tally("c1", 1, sends=1, project="push-only"), 0, 0)
    table.apply("subscriptions", None, day_record("2024-01-10", 1, sessions=1, project="web-only"), 0, 0)
    assert table.projects() == ["push-only", "web-only"]
    assert table.subscriptions("push-only") == (None, [])  # a project, with no subscription yet
    assert table.subscriptions("web-only") == (None, [day_record("2024-01-10", 1, 1, project="web-only")])
    assert table.campaigns("web-only") is None  # it has no tally
    assert table.subscriptions("nobody") is None
    table.apply("subscriptions", None, b'{"project_id": "shop", "version": "x"}', 0, 1)
    assert table.refused == 1


def test_campaigns_come_in_campaign_order_and_projects_apart() -> None:
    table = ResultTable()
    for campaign in ("b", "a", "c"):
        table.apply("tallies", None, tally(campaign, 1, sends=1), 0, 0)
    table.apply("tallies", None, tally("z", 1, sends=1, project="other"), 1, 0)
    assert table.projects() == ["other", "shop"]
    assert [msgspec.json.decode(t)["campaign_id"] for t in table.campaigns("shop") or []] == ["a", "b", "c"]
    assert table.campaigns("nobody") is None
    assert table.sizes() == (4, 0)


def test_a_conversion_is_found_only_under_its_project_and_bad_records_are_skipped() -> None:
    table = ResultTable()
    conversion = Conversion(
        conversion_id="abc",
        project_id="shop",
        campaign_id="c1",
        message_id="m",
        channel="push",
        event="purchase",
        basis="send",
        primary=True,
        user_key="u",
        device_id="d",
        touch_event_id="s",
        touch_ts=1,
        goal_event_id="g",
        goal_ts=2,
        amount="10",
        currency="KRW",
    )
    table.apply("conversions", None, msgspec.json.encode(conversion), 0, 0)
    assert table.conversion("shop", "abc") == msgspec.json.encode(conversion)
    assert table.conversion("other", "abc") is None
    table.apply("tallies", None, b"not json", 0, 1)
    table.apply("tallies", None, b'{"project_id": "shop"}', 0, 2)
    assert table.refused == 2
    assert table.sizes() == (0, 1)


def test_a_listener_stops_when_asked() -> None:
    table = ResultTable()
    heard: list[Change] = []
    stop = table.listen(heard.append)
    table.apply("tallies", None, tally("c1", 1, sends=1), 0, 0)
    stop()
    table.apply("tallies", None, tally("c1", 2, sends=2), 0, 1)
    assert len(heard) == 1


@pytest.mark.parametrize("size", [1, 3])
def test_a_stream_client_that_falls_behind_is_closed_not_buffered_forever(size: int) -> None:
    async def run() -> list[Change | None]:
        queue: asyncio.Queue[Change | None] = asyncio.Queue(size)
        for i in range(size + 2):  # more than it can hold
            _offer(queue, Change("shop", f"c{i}", b"{}"))
        return [queue.get_nowait() for _ in range(queue.qsize())]

    left = asyncio.run(run())
    # the stream reads the end first (None): it closes at once, without the stale changes, and the
    # page's EventSource reconnects to a fresh snapshot
    assert left[0] is None
    assert len(left) <= size
