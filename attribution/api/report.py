"""The records of the tallies and subscriptions topics as a text report (``attribution tally``): a
campaign's counts with its goals and goals after click, a project's web-push subscriptions. Pure
formatting of the records (as dicts), no I/O; the live page shows the same numbers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

#: (label, field) of a campaign's counts, in the order of the report (KARTE's names for its events)
COUNTS = (
    ("sends", "sends"),
    ("  users reached", "send_users"),
    ("accepted", "accepted"),
    ("failed", "failed"),
    ("displayed", "displayed"),
    ("clicks", "clicks"),
    ("  users clicked", "click_users"),
    ("clicked_alias", "clicked_alias"),
    ("link_clicks", "link_clicks"),
)
GOAL_HEADER = ("goal", "goals", "goals after click", "rate (primary)", "revenue", "revenue after click")


def grouped(n: int | str) -> str:
    """Digits in groups of three, on the exact decimal string (never through a float)."""
    whole, dot, fraction = str(n).partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-') or 0):,}{dot}{fraction}"


def when(ts_ms: int) -> str:
    """An event time (epoch ms) as ISO 8601 UTC."""
    moment = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def table(rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Rows as aligned columns: the first ``left`` columns to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _revenue(amounts: dict[str, str]) -> str:
    return ", ".join(f"{grouped(v)} {c}" for c, v in sorted(amounts.items())) or "-"


def campaign_report(tally: dict[str, Any]) -> str:
    """A campaign's tally record: its counts, then per goal (conversion event) the goals (send
    basis), the goals after click (click basis), the rate on the primary basis and the revenue."""
    lines = [
        f"{tally['project_id']} / {tally['campaign_id']}",
        f"version {tally['version']}, as of {when(tally['as_of_ts'])}",
        "",
        *table([(label, grouped(tally.get(name, 0))) for label, name in COUNTS]),
        "",
    ]
    events: dict[str, Any] = tally["events"]
    if not events:
        return "\n".join([*lines, "no goals"])
    rows = [GOAL_HEADER]
    for name, e in sorted(events.items()):
        rate = f"{e['rate'] * 100:.1f}% ({e['primary']})"
        rows.append(
            (
                name,
                grouped(e["send"]["conversions"]),
                grouped(e["click"]["conversions"]),
                rate,
                _revenue(e["send"]["revenue"]),
                _revenue(e["click"]["revenue"]),
            )
        )
    return "\n".join([*lines, *table(rows)])


def subscriptions_report(
    project_id: str, now: dict[str, Any] | None, days: Sequence[dict[str, Any]], of_days: int
) -> str:
    """A project's subscriptions: its now-record, then ``days`` (day records, newest first) of the
    ``of_days`` it has."""
    lines = [f"{project_id}: web-push subscriptions"]
    if now is None:
        lines.append("no project record yet")
    else:
        first = dt.date.fromisoformat(now["today"]) - dt.timedelta(days=now["visitor_days"] - 1)
        lines += [
            f"version {now['version']}, as of {when(now['as_of_ts'])}"
            f" (today {now['today']} in {now['timezone']})",
            "",
            *table(
                [
                    ("subscribed now", grouped(now["subscribed_now"])),
                    ("subscribed recent visitors", grouped(now["subscribed_recent_visitors"])),
                ]
            ),
            f"(recent visitors: their last visit in the last {now['visitor_days']} days, "
            f"{first.isoformat()} .. {now['today']})",
        ]
    lines.append("")
    if not days:
        return "\n".join([*lines, "no subscribe session yet"])
    rows = [("day", "subscribe sessions"), *((d["day"], grouped(d["subscribe_sessions"])) for d in days)]
    lines += table(rows)
    if of_days > len(days):
        lines.append(f"(the newest {len(days)} of {of_days} days; --days 0 shows them all)")
    return "\n".join(lines)
