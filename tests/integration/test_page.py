"""The live page of `attribution serve` in a real browser (Debian's chromium, driven by playwright;
no browser is ever downloaded): it shows the campaigns' numbers (the KARTE report's too) and the
project's web-push subscriptions, and moves when a goal converts or a visitor subscribes, without a
reload; a `/?token=` link logs a browser in; a page whose stream was refused (no token yet, a
restarted server catching up) comes back by itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from attribution.devkit.embedded import free_port
from tests.support.reference import local_day
from tests.support.scenarios import DAY_MS, PROJECT, goal, web
from tests.support.serve import KARTE, MIN, T0, TIMEZONE, TOKEN, World, running_world, serving

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Where the screenshot goes: tests/artifacts/ (ignored by git), or $TEST_ARTIFACTS_DIR.
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(__file__).parents[1] / "artifacts")
WAIT_MS = 20_000  # for the page to show what the stream says

if not CHROMIUM.is_file():
    pytest.skip(
        f"chromium is not installed at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402 - after the skip


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, redis_url: str) -> Iterator[World]:
    """The scenario published by a running worker, and a `serve` without a token following it."""
    with running_world(kafka_bootstrap, redis_url) as world, serving(world.engine.config) as world.serve:
        yield world


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def td(page: Page, campaign: str, field: str) -> Locator:
    """The table cell of a campaign's ``field`` (``sends``, ``signup.send.conversions``...)."""
    return page.locator(f'td[data-key="{PROJECT}|{campaign}|{field}"]')


LIVE = "live: updates as tallies change"


def test_the_page_shows_a_new_conversion_without_a_reload(world: World, browser: Browser) -> None:
    world.settle()
    context = browser.new_context(viewport={"width": 1920, "height": 1000})
    try:
        page = context.new_page()
        page.goto(f"{world.serve.url}/")
        conversions = td(page, "c5-live", "signup.send.conversions")
        expect(conversions).to_have_text("0", timeout=WAIT_MS)
        expect(page.locator("#status")).to_have_text(LIVE)
        # the scenario's numbers are on screen
        for (campaign, field), text in {
            ("c1-push", "sends"): "3",
            ("c1-push", "send_users"): "3",
            ("c1-push", "failed"): "1",
            ("c1-push", "click_users"): "1",
            ("c1-push", "purchase.click.conversions"): "1",
            ("c1-push", "purchase.click.revenue"): "39,800 KRW",
            ("c1-push", "purchase.rate"): "100.0% (click)",
            ("c2-web", "purchase.send.revenue"): "54,800 KRW",
            ("c4-email", "purchase.send.revenue"): "6 KRW",
        }.items():
            expect(td(page, campaign, field)).to_have_text(text)
        page.evaluate("window.stillTheSamePage = true")  # gone if the page were loaded again
        world.produce([goal("g-page", "signup", "d7", T0 + 20 * MIN, user="u7")])
        expect(conversions).to_have_text("1", timeout=WAIT_MS)
        expect(td(page, "c5-live", "signup.rate")).to_have_text("100.0% (send)")
        assert page.evaluate("window.stillTheSamePage") is True
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "live-page.png"
        page.screenshot(path=shot, full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        context.close()


def test_a_token_link_logs_the_browser_in_and_a_waiting_page_goes_live(
    world: World, browser: Browser
) -> None:
    world.settle()
    with serving(world.engine.config, ATTRIBUTION_API_TOKEN=TOKEN) as server:
        context = browser.new_context()
        try:
            waiting = context.new_page()
            waiting.goto(f"{server.url}/")  # no cookie: the stream is refused, the page says how to log in
            expect(waiting.locator("#status")).to_contain_text(
                "a token is required: open /?token=", timeout=WAIT_MS
            )
            assert waiting.locator("td").count() == 0
            waiting.evaluate("window.stillTheSamePage = true")
            # log in in another tab, with the link
            login = context.new_page()
            login.goto(f"{server.url}/?token={TOKEN}")
            assert login.url == f"{server.url}/"  # redirected: the token leaves the address bar
            [cookie] = context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                "attribution_token",
                True,
                "Strict",
            )
            assert login.evaluate("document.cookie") == ""  # HttpOnly: not readable by scripts
            for page in (login, waiting):  # the waiting tab tries again by itself and goes live
                expect(page.locator("#status")).to_have_text(LIVE, timeout=WAIT_MS)
                expect(td(page, "c1-push", "sends")).to_have_text("3")
            assert waiting.evaluate("window.stillTheSamePage") is True
            # and both stay live: the stream (with the cookie) brings the next change
            world.produce([goal("g-token", "purchase", "d7", T0 + 21 * MIN, user="u7", price=700, qty=1)])
            for page in (login, waiting):
                expect(td(page, "c5-live", "purchase.send.conversions")).to_have_text("1", timeout=WAIT_MS)
                expect(td(page, "c5-live", "purchase.send.revenue")).to_have_text("700 KRW")
        finally:
            context.close()


def test_an_open_page_comes_back_by_itself_when_serve_restarts(world: World, browser: Browser) -> None:
    world.settle()
    port = free_port()
    context = browser.new_context(viewport={"width": 800, "height": 600})  # narrower than the tables
    try:
        page = context.new_page()
        with serving(world.engine.config, port=port) as first:
            page.goto(f"{first.url}/")
            expect(page.locator("#status")).to_have_text(LIVE, timeout=WAIT_MS)
            page.evaluate("window.stillTheSamePage = true")
        expect(page.locator("#status")).not_to_have_text(LIVE, timeout=WAIT_MS)  # it noticed
        # a new process on the same port; until it has caught up it answers 503, which would close
        # an EventSource for good: the page tries again by itself
        with serving(world.engine.config, port=port, ready=False):
            expect(page.locator("#status")).to_have_text(LIVE, timeout=WAIT_MS)
            # a wide table scrolls sideways in its own box, and a change does not scroll it back
            wide = page.locator(f'.wrap[data-project="{PROJECT}"]')
            wide.evaluate("box => { box.scrollLeft = 300; }")
            world.produce([goal("g-restart", "signup", "d3", T0 + 20 * MIN, user="u3")])
            expect(td(page, "c1-push", "signup.send.conversions")).to_have_text("2", timeout=WAIT_MS)
            assert wide.evaluate("box => box.scrollLeft") == 300
            assert page.evaluate("document.documentElement.scrollWidth") == 800  # the page does not
        assert page.evaluate("window.stillTheSamePage") is True
    finally:
        context.close()


def sub(page: Page, field: str) -> Locator:
    """An element of the project's subscriptions panel (``subscribed_now``, ``day|2024-01-10``...)."""
    return page.locator(f'[data-key="{PROJECT}|subscriptions|{field}"]')


def test_the_page_shows_the_karte_report_and_the_subscriptions_panel(world: World, browser: Browser) -> None:
    world.settle()
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{world.serve.url}/")
        expect(page.locator("#status")).to_have_text(LIVE, timeout=WAIT_MS)
        # the KARTE report of the web-push campaign: its counts, goals and goals after click
        for field, text in {
            "sends": "2",
            "accepted": "2",
            "failed": "1",
            "displayed": "1",
            "clicks": "1",
            "clicked_alias": "1",
            "link_clicks": "1",
            "signup.send.conversions": "1",
            "signup.click.conversions": "1",
            "view_cart.send.conversions": "1",
            "view_cart.click.conversions": "0",
        }.items():
            expect(td(page, KARTE, field)).to_have_text(text)
        expect(td(page, "c1-push", "accepted")).to_have_text("0")  # a push campaign has none
        headers = page.locator(f'table[data-project="{PROJECT}"] th').all_inner_texts()
        assert {
            "accepted",
            "displayed",
            "clicked (alias)",
            "link clicks",
            "goals",
            "goals after click",
        } <= set(headers), headers
        # the subscriptions panel: v1 and v2 subscribed (v4 left), one session on each of three days
        panel = page.locator(f'section.subs[data-project="{PROJECT}"]')
        expect(sub(page, "subscribed_now")).to_have_text("2")
        expect(sub(page, "subscribed_recent_visitors")).to_have_text("2")
        expect(panel).to_contain_text("subscribed among the visitors of the last 7 days")
        today = local_day(T0 + 5 * MIN, TIMEZONE).isoformat()
        expect(sub(page, "today")).to_contain_text(f"today {today} ({TIMEZONE})")
        for ts in (T0, T0 - DAY_MS, T0 - 2 * DAY_MS):
            expect(sub(page, f"day|{local_day(ts, TIMEZONE).isoformat()}")).to_have_text("1")
        assert panel.locator("table.days td.count").count() == 14  # the last 14 days, days without one: 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "subscriptions-panel.png"
        panel.screenshot(path=shot)
        assert shot.stat().st_size > 3_000
        # a visitor subscribes: the panel moves, without a reload
        page.evaluate("window.stillTheSamePage = true")
        world.produce([web("w-page", "push_apps_subscribe", "v6", T0 + 20 * MIN, session="f0")])
        expect(sub(page, "subscribed_now")).to_have_text("3", timeout=WAIT_MS)
        expect(sub(page, "subscribed_recent_visitors")).to_have_text("3")
        assert page.evaluate("window.stillTheSamePage") is True
        page.screenshot(path=ARTIFACTS / "live-page-karte.png", full_page=True)
    finally:
        context.close()
