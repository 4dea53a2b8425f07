"""`attribution serve` as a real process against a real broker, with a real worker publishing the
tallies, subscriptions and conversions it follows: its answers are the topics' latest records, its
errors say what is wrong, its token guards the data, its event stream moves with the tallies and the
subscriptions, and it stands alone (no Redis)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
from openapi_spec_validator import validate as validate_openapi

from attribution.devkit.embedded import free_port
from tests.support.kafka import Engine, engine_config
from tests.support.reference import local_day, normalise_tally
from tests.support.scenarios import PROJECT, goal, web
from tests.support.serve import (
    CAMPAIGNS,
    KARTE,
    MIN,
    OTHER,
    T0,
    TIMEZONE,
    TOKEN,
    World,
    eventually,
    running_world,
    serve_env,
    serving,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, redis_url: str) -> Iterator[World]:
    """The scenario published by a running worker, and a `serve` with a token started after it."""
    with (
        running_world(kafka_bootstrap, redis_url) as world,
        serving(world.engine.config, ATTRIBUTION_API_TOKEN=TOKEN) as world.serve,
    ):
        yield world


def api_tallies(client: httpx.Client, project: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every campaign of ``project`` as GET /v1/projects/{p}/campaigns/{c} answers it."""
    listed = client.get(f"/v1/projects/{project}/campaigns")
    assert listed.status_code == 200, listed.text
    out = {}
    for t in listed.json()["campaigns"]:
        one = client.get(f"/v1/projects/{project}/campaigns/{t['campaign_id']}")
        assert one.status_code == 200, one.text
        assert one.headers["content-type"] == "application/json"
        out[(project, t["campaign_id"])] = one.json()
    return out


def agree(world: World, client: httpx.Client, project: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Wait until every campaign of ``project`` through ``client`` equals the tallies topic's latest
    record of it (the server and the test's reader both follow the topic); returns them."""
    api, topic = eventually(
        lambda: (api_tallies(client, project), world.topic_tallies(project)),
        lambda both: both[0] == both[1],
        f"the API and the tallies topic agree on {project}",
    )
    assert api  # not two empty answers
    return topic


# --- the numbers --------------------------------------------------------------------------------


def test_the_api_answers_the_tallies_topics_latest_record_of_every_campaign(world: World) -> None:
    world.settle()
    with world.api() as api:
        latest = agree(world, api, PROJECT) | agree(world, api, OTHER)
        assert {c for p, c in latest if p == PROJECT} == set(CAMPAIGNS)
        listed = api.get(f"/v1/projects/{PROJECT}/campaigns").json()
        assert listed["project_id"] == PROJECT
        assert [t["campaign_id"] for t in listed["campaigns"]] == CAMPAIGNS  # campaign order
        assert listed["campaigns"] == [latest[(PROJECT, c)] for c in CAMPAIGNS]
        assert api.get("/v1/projects").json() == {"projects": sorted([PROJECT, OTHER])}
    # the scenario's numbers, as a reader of the API sees them
    c1 = latest[(PROJECT, "c1-push")]
    assert (c1["sends"], c1["send_users"], c1["failed"], c1["clicks"], c1["click_users"]) == (3, 3, 1, 1, 1)
    purchase = c1["events"]["purchase"]
    assert purchase["primary"] == "click"
    assert purchase["click"] == {"conversions": 1, "revenue": {"KRW": "39800"}}
    assert purchase["send"] == {"conversions": 1, "revenue": {"KRW": "39800"}}
    assert c1["events"]["signup"]["send"]["conversions"] == 1
    c2 = latest[(PROJECT, "c2-web")]["events"]["purchase"]
    assert (c2["primary"], c2["send"]["conversions"], c2["send"]["revenue"]) == ("send", 2, {"KRW": "54800"})
    # the KARTE report of the web-push campaign: its counts, its goals and goals after click
    c6 = latest[(PROJECT, KARTE)]
    counts = ("sends", "accepted", "failed", "displayed", "clicks", "clicked_alias", "link_clicks")
    assert {k: c6[k] for k in counts} == dict(zip(counts, (2, 2, 1, 1, 1, 1, 1), strict=True))
    goals = {name: (e["send"]["conversions"], e["click"]["conversions"]) for name, e in c6["events"].items()}
    assert goals == {"purchase": (0, 0), "signup": (1, 1), "view_cart": (1, 0)}


def test_the_api_answers_the_subscriptions_topics_latest_records_newest_day_first(world: World) -> None:
    world.settle()
    with world.api() as api:
        path = f"/v1/projects/{PROJECT}/subscriptions"
        answer = eventually(
            lambda: api.get(path).json(),
            lambda body: body == world.topic_subscriptions(PROJECT),
            "the API and the subscriptions topic agree",
        )
        # a project with tallies but no web event: no subscription yet, not an error
        assert api.get(f"/v1/projects/{OTHER}/subscriptions").json() == {
            "project_id": OTHER,
            "now": None,
            "days": [],
        }
    now = answer["now"]
    assert (now["subscribed_now"], now["subscribed_recent_visitors"]) == (2, 2)  # v1 and v2; v4 left
    assert (now["timezone"], now["visitor_days"], now["today"]) == (TIMEZONE, 7, day(T0 + 5 * MIN))
    days = [(d["day"], d["subscribe_sessions"]) for d in answer["days"]]
    assert days == sorted({(day(ts), 1) for ts in (T0, T0 - DAY, T0 - 2 * DAY)}, reverse=True), days


DAY = 24 * 3600 * 1000


def day(ts: int) -> str:
    return local_day(ts, TIMEZONE).isoformat()


def test_a_conversion_is_its_latest_record_and_is_found_only_in_its_own_project(world: World) -> None:
    world.settle()
    latest = world.conversions.latest_by_id()
    ours = {cid: c for cid, c in latest.items() if c["project_id"] == PROJECT}
    theirs = {cid: c for cid, c in latest.items() if c["project_id"] == OTHER}
    assert (len(ours), len(theirs)) == (14, 1)  # c1: 3, c2: 3, c3: 1, c4: 4 (both bases), c6: 3; other: 1
    with world.api() as api:
        for cid, record in ours.items():
            path = f"/v1/projects/{PROJECT}/conversions/{cid}"
            got = eventually(partial(api.get, path), lambda r: r.status_code == 200, path)
            assert got.headers["content-type"] == "application/json"
            assert got.json() == record
        for cid, record in theirs.items():
            assert api.get(f"/v1/projects/{OTHER}/conversions/{cid}").json() == record
            elsewhere = api.get(f"/v1/projects/{PROJECT}/conversions/{cid}")
            assert elsewhere.status_code == 404
            assert elsewhere.json() == {"error": f"no conversion {cid!r} in project {PROJECT!r}"}


# --- errors -------------------------------------------------------------------------------------


def test_errors_are_json_naming_what_was_not_found_or_why_it_was_refused(world: World) -> None:
    long_id = "x" * 257
    with world.api() as api:
        cases = {
            "/v1/projects/nope/campaigns": (404, "no tally of project 'nope'"),
            f"/v1/projects/{PROJECT}/campaigns/nope": (
                404,
                f"no tally of campaign 'nope' in project {PROJECT!r}",
            ),
            "/v1/projects/nope/campaigns/c1-push": (404, "no tally of campaign 'c1-push' in project 'nope'"),
            "/v1/projects/nope/subscriptions": (404, "no tally or subscriptions of project 'nope'"),
            f"/v1/projects/{long_id}/subscriptions": (
                400,
                "path.project: String should have at most 256 characters",
            ),
            f"/v1/projects/{PROJECT}/conversions/nope": (404, f"no conversion 'nope' in project {PROJECT!r}"),
            f"/v1/projects/{PROJECT}/campaigns/{long_id}": (
                400,
                "path.campaign: String should have at most 256 characters",
            ),
            f"/v1/projects/{long_id}/campaigns": (
                400,
                "path.project: String should have at most 256 characters",
            ),
            f"/v1/projects/{PROJECT}/conversions/{long_id}": (
                400,
                "path.conversion_id: String should have at most 256 characters",
            ),
            "/v1/no-such-thing": (404, "Not Found"),
            "/nowhere": (404, "Not Found"),
        }
        for path, (status, error) in cases.items():
            r = api.get(path)
            assert (r.status_code, r.headers["content-type"], r.json()) == (
                status,
                "application/json",
                {"error": error},
            ), path
        # an id of exactly 256 characters is fine: it is just not there
        assert api.get(f"/v1/projects/{PROJECT}/campaigns/{'x' * 256}").status_code == 404


# --- the token ----------------------------------------------------------------------------------


def test_a_token_guards_the_data_but_not_the_probes_and_is_never_logged(world: World) -> None:
    with serving(world.engine.config, ATTRIBUTION_API_TOKEN=TOKEN, ATTRIBUTION_LOG_LEVEL="DEBUG") as server:
        data = f"/v1/projects/{PROJECT}/campaigns/c1-push"
        with server.client() as anonymous:
            for path in ("/v1/projects", data, f"/v1/events?project={PROJECT}"):
                r = anonymous.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"] == "Bearer"
                assert "bearer token is required" in r.json()["error"]
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert anonymous.get(probe).status_code == 200, probe
            assert anonymous.get("/").status_code == 200  # the page itself holds no data
        with server.client("wrong-token-of-the-right-length") as wrong:
            assert wrong.get(data).status_code == 401
        with server.client(TOKEN) as right:
            assert right.get(data).status_code == 200
        # the page's way in: /?token= sets an HttpOnly cookie and redirects to /
        with server.client() as browser:
            refused = browser.get("/", params={"token": "wrong-token-of-the-right-length"})
            assert refused.status_code == 401 and not browser.cookies
            login = browser.get("/", params={"token": TOKEN})
            assert login.status_code == 303 and login.headers["location"] == "/"
            cookie = login.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert browser.cookies.get("attribution_token") == TOKEN
            assert browser.get(data).status_code == 200
            assert browser.get("/v1/projects").json()["projects"] == sorted([PROJECT, OTHER])
        log = server.stop()
    assert "serving on http://127.0.0.1:" in log  # the log was captured
    assert TOKEN not in log


# --- the event stream ---------------------------------------------------------------------------


def sse_events(lines: Iterator[str], deadline: float) -> Iterator[tuple[str, str]]:
    """(event, data) of a server-sent event stream, until ``deadline``."""
    event, data = "message", list[str]()
    for line in lines:
        assert time.monotonic() < deadline, "the event stream did not deliver in time"
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def test_the_event_stream_sends_a_snapshot_then_the_new_tally_of_a_conversion(world: World) -> None:
    world.settle()
    deadline = time.monotonic() + 30
    timeout = httpx.Timeout(10.0, read=20.0)  # pings come every 15 s
    with (
        world.serve.client(TOKEN, timeout_s=10.0) as api,
        api.stream("GET", "/v1/events", params={"project": PROJECT}, timeout=timeout) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_events(stream.iter_lines(), deadline)
        kind, data = next(events)
        assert kind == "snapshot"
        snapshot = {t["campaign_id"]: t for t in orjson.loads(data)}
        assert sorted(snapshot) == CAMPAIGNS and {t["project_id"] for t in snapshot.values()} == {PROJECT}
        before = snapshot["c5-live"]
        assert before["events"]["signup"]["send"]["conversions"] == 0
        # then the project's subscriptions records, one event each: its now-record and its days
        current = world.topic_subscriptions(PROJECT)
        records = [orjson.loads(next(events)[1]) for _ in range(1 + len(current["days"]))]
        assert records == [current["now"], *current["days"]]
        world.produce([goal("g-live", "signup", "d7", T0 + 20 * MIN, user="u7")])
        for kind, data in events:
            assert kind in ("tally", "subscriptions"), kind
            tally = orjson.loads(data)
            assert tally["project_id"] == PROJECT
            if kind != "tally":
                continue
            if tally["campaign_id"] == "c5-live" and tally["events"]["signup"]["send"]["conversions"] == 1:
                break
        else:
            pytest.fail("the event stream ended before the new tally")
        assert tally["version"] > before["version"]
        assert tally["events"]["signup"]["rate"] == 1.0
    # what the stream said is what the topic and the API say once everything is in
    world.settle()
    with world.api() as api:
        latest = agree(world, api, PROJECT)[(PROJECT, "c5-live")]
        assert normalise_tally(latest) == normalise_tally(tally) and latest["version"] >= tally["version"]
        # the closed stream let go of its listener
        eventually(
            lambda: dict(_samples(api.get("/metrics").text))["attribution_api_stream_clients"],
            lambda clients: clients == 0,
            "no stream client left",
        )


def test_the_event_stream_sends_the_new_subscriptions_records_of_a_subscribe(world: World) -> None:
    world.settle()
    deadline = time.monotonic() + 30
    timeout = httpx.Timeout(10.0, read=20.0)
    with (
        world.serve.client(TOKEN) as api,
        api.stream("GET", "/v1/events", params={"project": PROJECT}, timeout=timeout) as stream,
    ):
        events = sse_events(stream.iter_lines(), deadline)
        assert next(events)[0] == "snapshot"
        before = world.topic_subscriptions(PROJECT)["now"]
        world.produce([web("w-live", "push_apps_subscribe", "v5", T0 + 20 * MIN, session="e0")])
        for kind, data in events:
            record = orjson.loads(data)
            if kind == "subscriptions" and record.get("day") is None and record["subscribed_now"] == 3:
                break
        else:
            pytest.fail("the event stream ended before the new subscriptions record")
    assert record["version"] > before["version"] and record["subscribed_recent_visitors"] == 3
    world.settle()
    with world.api() as api:
        assert api.get(f"/v1/projects/{PROJECT}/subscriptions").json()["now"] == record


def test_a_stale_subscriptions_record_that_lands_last_never_replaces_the_newest(
    kafka_bootstrap: str, redis_url: str
) -> None:
    """Records produced straight to a subscriptions topic of its own (no worker): a lower version
    landing after the newest (another worker's late snapshot) changes nothing; a project known by
    its subscriptions only is a project, with no campaign."""
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))

    def now(version: int, subscribed: int) -> dict[str, Any]:
        return {
            "project_id": "web-shop",
            "version": version,
            "as_of_ts": T0,
            "today": "2024-01-10",
            "timezone": "UTC",
            "visitor_days": 7,
            "subscribed_now": subscribed,
            "subscribed_recent_visitors": subscribed - 1,
        }

    def day_of(day: str, version: int, sessions: int) -> dict[str, Any]:
        return {
            "project_id": "web-shop",
            "day": day,
            "version": version,
            "as_of_ts": T0,
            "subscribe_sessions": sessions,
        }

    newest = [now(5, 3), day_of("2024-01-10", 5, 2), day_of("2024-01-08", 2, 1)]
    stale = [now(4, 999), day_of("2024-01-10", 1, 999)]
    try:
        for record in newest + stale:
            key = record["project_id"] + (f":{record['day']}" if "day" in record else "")
            engine.produce_raw("subscriptions", key.encode(), orjson.dumps(record))
        with serving(engine.config) as server, server.client() as api:  # ready: every record was read
            assert api.get("/v1/projects/web-shop/subscriptions").json() == {
                "project_id": "web-shop",
                "now": newest[0],
                "days": newest[1:],
            }
            assert api.get("/v1/projects").json() == {"projects": ["web-shop"]}
            missing = api.get("/v1/projects/web-shop/campaigns")
            assert (missing.status_code, missing.json()) == (404, {"error": "no tally of project 'web-shop'"})
            with api.stream("GET", "/v1/events", timeout=httpx.Timeout(10.0, read=20.0)) as stream:
                events = sse_events(stream.iter_lines(), time.monotonic() + 30)
                assert next(events) == ("snapshot", "[]")
                assert [(k, orjson.loads(d)) for k, d in (next(events) for _ in newest)] == [
                    ("subscriptions", r) for r in newest
                ]
    finally:
        engine.close()


# --- the documents ------------------------------------------------------------------------------


def test_openapi_is_a_valid_3_1_document_of_every_v1_path_with_the_topic_schemas(world: World) -> None:
    with world.serve.client() as anonymous:
        r = anonymous.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    validate_openapi(doc)  # raises with the offending part when the document is not valid
    assert doc["openapi"].startswith("3.1.")
    v1 = {path for path in doc["paths"] if path.startswith("/v1/")}
    assert v1 == {
        "/v1/projects",
        "/v1/projects/{project}/campaigns",
        "/v1/projects/{project}/campaigns/{campaign}",
        "/v1/projects/{project}/conversions/{conversion_id}",
        "/v1/projects/{project}/subscriptions",
        "/v1/events",
    }
    schemas = doc["components"]["schemas"]
    assert {"Tally", "Conversion", "Subscriptions"} <= set(schemas)
    assert {"subscribed_now", "day", "subscribe_sessions"} <= set(schemas["Subscriptions"]["properties"])
    subs = doc["paths"]["/v1/projects/{project}/subscriptions"]["get"]["responses"]["200"]
    days = subs["content"]["application/json"]["schema"]["properties"]["days"]
    assert days == {"type": "array", "items": {"$ref": "#/components/schemas/Subscriptions"}}
    assert {"project_id", "campaign_id", "version", "events"} <= set(schemas["Tally"]["properties"])
    assert {"conversion_id", "project_id", "amount"} <= set(schemas["Conversion"]["properties"])
    one = doc["paths"]["/v1/projects/{project}/campaigns/{campaign}"]["get"]["responses"]["200"]
    assert one["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Tally"}


def test_metrics_count_requests_by_route_and_time_them(world: World) -> None:
    with world.api() as api:
        for _ in range(3):
            assert api.get(f"/v1/projects/{PROJECT}/campaigns/c1-push").status_code == 200
        assert api.get(f"/v1/projects/{PROJECT}/campaigns/nope").status_code == 404
        text = api.get("/metrics").text
    route = "/v1/projects/{project}/campaigns/{campaign}"
    samples = dict(_samples(text))
    ok = f'attribution_api_requests_total{{code="200",method="GET",route="{route}"}}'
    missing = f'attribution_api_requests_total{{code="404",method="GET",route="{route}"}}'
    assert samples[ok] >= 3 and samples[missing] >= 1
    assert samples[f'attribution_api_request_seconds_count{{route="{route}"}}'] >= 4
    assert any(k.startswith("attribution_api_request_seconds_bucket{") for k in samples)
    assert samples["attribution_api_caught_up"] == 1
    assert samples["attribution_api_campaigns"] == len(CAMPAIGNS) + 1


def _samples(text: str) -> Iterator[tuple[str, float]]:
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            yield name, float(value)


# --- readiness, and a serve of its own ----------------------------------------------------------


def test_readyz_is_503_until_the_topics_are_read_then_200(world: World) -> None:
    world.settle()
    with serving(world.engine.config, ready=False, ATTRIBUTION_API_TOKEN=TOKEN) as server:
        seen: list[tuple[int, int, dict[str, Any]]] = []  # (/v1/projects, /readyz, its body)
        deadline = time.monotonic() + 60
        with server.client(TOKEN, timeout_s=2.0) as client:
            while not seen or seen[-1][1] != 200:
                assert time.monotonic() < deadline, seen[-3:]
                assert server.process.poll() is None, server.log()
                try:  # the data first: when /readyz says 503 next, the data said 503 too
                    data = client.get("/v1/projects")
                    ready = client.get("/readyz")
                except httpx.TransportError:  # not listening yet
                    time.sleep(0.01)
                    continue
                seen.append((data.status_code, ready.status_code, ready.json()))
        # a 503 is usual (catching up takes ~1 s here), but only timing decides whether one is seen;
        # what must hold: every answer before ready is 503, and ready means every campaign is there
        waiting = [s for s in seen if s[1] == 503]
        assert all(s == (503, 503, {"ok": False, "caught_up": False}) for s in waiting), waiting
        assert seen[-1][1:] == (200, {"ok": True, "caught_up": True})
        # ready means caught up: every campaign is there at once
        with server.client(TOKEN) as client:
            assert api_tallies(client, PROJECT) == world.topic_tallies(PROJECT)


def test_a_later_serve_builds_the_same_table_from_the_topics_alone_without_redis(world: World) -> None:
    world.settle()
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with serving(world.engine.config, REDIS_URL=nowhere) as later:
        with later.client() as api:  # no token on this one
            for project in (PROJECT, OTHER):  # ready: caught up, so all there at once
                assert api_tallies(api, project) == world.topic_tallies(project)
            for cid, record in world.conversions.latest_by_id().items():
                assert api.get(f"/v1/projects/{record['project_id']}/conversions/{cid}").json() == record
        log = later.stop()
    assert "redis" not in log.lower(), log


def test_a_port_in_use_is_refused_in_one_line_naming_the_setting(world: World) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "attribution", "serve"],
            env=serve_env(world.engine.config, port),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"attribution: bad setting ATTRIBUTION_API_PORT: cannot listen on 127.0.0.1:{port} "
        "(Address already in use); pick a free port"
    ]
