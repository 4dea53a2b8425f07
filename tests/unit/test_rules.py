"""Project settings validation: every refusal names the field, and the channel/basis rules hold."""

from __future__ import annotations

from typing import Any

import pytest

from attribution.core.model import Basis, Channel
from attribution.core.rules import (
    CHANNEL_BASES,
    MAX_WINDOW_MS,
    ConversionEvent,
    ProjectSettings,
    SettingsBook,
    parse_settings,
)
from attribution.errors import BadSettings

TOP_FIELDS = (
    "project_id, version, conversion_events, campaign_channels, campaign_goals, visitor_days, timezone"
)


def event(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "purchase", "window_ms": 1000}
    doc.update(overrides)
    return doc


def doc(*events: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"project_id": "p", "version": 1, "conversion_events": list(events) or [event()]}
    out.update(overrides)
    return out


def refused(raw: object, max_events: int = 5) -> BadSettings:
    with pytest.raises(BadSettings) as info:
        parse_settings(raw, max_events)
    return info.value


# --- accepted ----------------------------------------------------------------------------------------


def test_a_full_document_is_accepted() -> None:
    s = parse_settings(
        doc(
            event(
                basis={
                    "push": "click",
                    "web_push": "send",
                    "email": "click",
                    "kakao": "send",
                    "in_app": "click",
                },
                purchase={"amount_key": "price", "quantity_key": "qty", "currency": "KRW"},
            ),
            event(name="signup", window_ms=MAX_WINDOW_MS),
        )
    )
    assert s.project_id == "p"
    assert s.version == 1
    purchase = s.event("purchase")
    assert purchase is not None
    assert purchase.basis["push"] is Basis.CLICK
    assert purchase.purchase is not None
    assert purchase.purchase.currency == "KRW"
    assert s.event("missing") is None
    assert s.max_window_ms == MAX_WINDOW_MS


def test_no_conversion_events_is_allowed() -> None:
    s = parse_settings({"project_id": "p", "version": 0, "conversion_events": []})
    assert s.conversion_events == []
    assert s.max_window_ms == 0


# --- basis per channel ----------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["kakao", "sms"])
def test_click_basis_refused_for_send_only_channels(channel: str) -> None:
    err = refused(doc(event(basis={channel: "click"})))
    assert err.field == f"conversion_events[0].basis.{channel}"
    assert "send" in err.reason
    assert str(err).startswith(f"conversion_events[0].basis.{channel}: ")


def test_send_basis_refused_for_in_app() -> None:
    err = refused(doc(event(), event(name="signup", basis={"in_app": "send"})))
    assert err.field == "conversion_events[1].basis.in_app"
    assert "click" in err.reason


@pytest.mark.parametrize("channel", ["push", "web_push", "email"])
@pytest.mark.parametrize("basis", ["send", "click"])
def test_push_like_channels_take_either_basis(channel: str, basis: str) -> None:
    ev = parse_settings(doc(event(basis={channel: basis}))).conversion_events[0]
    assert ev.primary_basis(Channel(channel)) is Basis(basis)


def test_unknown_channel_refused() -> None:
    err = refused(doc(event(basis={"fax": "send"})))
    assert err.field == "conversion_events[0].basis.fax"
    assert "unknown channel" in err.reason


def test_unknown_basis_refused() -> None:
    err = refused(doc(event(basis={"push": "open"})))
    assert err.field.startswith("conversion_events[0].basis")
    assert "open" in err.reason


def test_every_channel_has_bases() -> None:
    assert set(CHANNEL_BASES) == set(Channel)
    assert all(CHANNEL_BASES.values())


# --- names, limits, windows, currency -----------------------------------------------------------


def test_duplicate_names_refused() -> None:
    err = refused(doc(event(), event(name="signup"), event()))
    assert err.field == "conversion_events[2].name"
    assert "duplicate" in err.reason


def test_more_than_max_events_refused() -> None:
    five = [event(name=f"e{i}") for i in range(5)]
    assert len(parse_settings(doc(*five)).conversion_events) == 5
    err = refused(doc(*five, event(name="e5")))
    assert err.field == "conversion_events"
    assert "at most 5" in err.reason
    err = refused(doc(event(name="a"), event(name="b")), max_events=1)
    assert err.field == "conversion_events"
    assert len(parse_settings(doc(event(name="a"), event(name="b")), max_events=2).conversion_events) == 2


@pytest.mark.parametrize("window_ms", [0, -1, MAX_WINDOW_MS + 1, 91 * 24 * 3600 * 1000])
def test_window_out_of_range_refused(window_ms: int) -> None:
    err = refused(doc(event(window_ms=window_ms)))
    assert err.field == "conversion_events[0].window_ms"
    assert "90 days" in err.reason


@pytest.mark.parametrize("window_ms", [1, MAX_WINDOW_MS])
def test_window_bounds_accepted(window_ms: int) -> None:
    assert parse_settings(doc(event(window_ms=window_ms))).conversion_events[0].window_ms == window_ms


def test_ninety_days_is_the_max_window() -> None:
    assert MAX_WINDOW_MS == 90 * 24 * 3600 * 1000


@pytest.mark.parametrize("currency", ["krw", "Krw", "KRWX", "KR", "", "K1W"])
def test_bad_currency_refused(currency: str) -> None:
    err = refused(doc(event(purchase={"amount_key": "price", "currency": currency})))
    assert err.field == "conversion_events[0].purchase.currency"


@pytest.mark.parametrize("name", ["a|b", "|", "purchase|"])
def test_pipe_in_names_refused(name: str) -> None:
    err = refused(doc(event(), event(name=name)))
    assert err.field == "conversion_events[1].name"
    assert "'|'" in err.reason


def test_empty_name_refused() -> None:
    assert refused(doc(event(name=""))).field == "conversion_events[0].name"


def test_empty_project_and_negative_version_refused() -> None:
    assert refused(doc(project_id="")).field == "project_id"
    assert refused(doc(version=-1)).field == "version"


# --- msgspec type errors name the path ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (doc(version="1"), "version"),
        (doc(project_id=5), "project_id"),
        (doc(event(window_ms="abc")), "conversion_events[0].window_ms"),
        (doc(event(), event(name="b", window_ms=1.5)), "conversion_events[1].window_ms"),
        (doc(event(name=7)), "conversion_events[0].name"),
        (doc(event(purchase={"amount_key": "a", "currency": 5})), "conversion_events[0].purchase.currency"),
        (doc(event(purchase={"currency": "KRW"})), "conversion_events[0].purchase"),
        (doc(event(basis=["push"])), "conversion_events[0].basis"),
        (doc(conversion_events={"name": "x"}), "conversion_events"),
    ],
)
def test_type_errors_name_the_path(raw: object, field: str) -> None:
    err = refused(raw)
    assert err.field == field
    assert f"$.{field}" in err.reason


@pytest.mark.parametrize("raw", [[1], "settings", None, {"project_id": "p", "version": 1}])
def test_wrong_shape_refused(raw: object) -> None:
    err = refused(raw)
    assert err.field == "settings"


# --- unknown fields are refused at every level, naming the path -----------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        (
            doc(conversion_event=[]),
            "conversion_event",
            TOP_FIELDS,
        ),
        (
            doc(time_zone="UTC"),
            "time_zone",
            TOP_FIELDS,
        ),
        (
            doc(event(), event(name="b", windw_ms=5)),
            "conversion_events[1].windw_ms",
            "name, window_ms, basis, purchase",
        ),
        (
            doc(event(purchase={"amount_key": "a", "currency": "KRW", "quantity": "q"})),
            "conversion_events[0].purchase.quantity",
            "amount_key, quantity_key, currency",
        ),
    ],
)
def test_unknown_fields_are_refused_naming_the_path_and_the_fields_expected_there(
    raw: object, field: str, expected: str
) -> None:
    err = refused(raw)
    assert err.field == field
    assert err.reason == f"unknown field (expected one of: {expected})"
    assert str(err) == f"{field}: unknown field (expected one of: {expected})"


def test_an_unknown_channel_in_basis_is_refused() -> None:
    assert refused(doc(event(basis={"fax": "send"}))).field == "conversion_events[0].basis.fax"


# --- campaign_channels -----------------------------------------------------------------------------


def test_campaign_channels_are_optional_and_validated() -> None:
    assert parse_settings(doc()).campaign_channels == {}
    s = parse_settings(doc(campaign_channels={"spring": "sms", "news": "email"}))
    assert s.campaign_channels == {"spring": "sms", "news": "email"}
    err = refused(doc(campaign_channels={"spring": "fax"}))
    assert (err.field, err.reason) == (
        "campaign_channels.spring",
        "unknown channel 'fax' (expected one of: push, web_push, kakao, sms, in_app, email)",
    )
    assert refused(doc(campaign_channels={"": "push"})).field == "campaign_channels"
    assert refused(doc(campaign_channels={"x" * 257: "push"})).field == "campaign_channels"
    assert refused(doc(campaign_channels=["push"])).field == "campaign_channels"
    assert refused(doc(campaign_channels={"spring": 1})).field.startswith("campaign_channels")


def test_rate_channel_is_the_declared_one_else_the_first_seen_in_channel_order() -> None:
    s = parse_settings(doc(campaign_channels={"declared": "sms"}))
    assert s.rate_channel("declared", {Channel.PUSH, Channel.SMS}) is Channel.SMS
    assert s.rate_channel("declared", set()) is Channel.SMS  # declared wins, even before a send
    assert s.rate_channel("other", {Channel.EMAIL, Channel.KAKAO, Channel.IN_APP}) is Channel.KAKAO
    assert s.rate_channel("other", {Channel.SMS, Channel.WEB_PUSH}) is Channel.WEB_PUSH
    assert s.rate_channel("other", {Channel.EMAIL, Channel.IN_APP}) is Channel.IN_APP
    assert s.rate_channel("other", set()) is None
    # the order is Channel's declaration order, as documented in topics/README.md
    assert [c.value for c in Channel] == ["push", "web_push", "kakao", "sms", "in_app", "email"]


# --- primary basis -------------------------------------------------------------------------------


def test_primary_basis_defaults() -> None:
    plain = ConversionEvent(name="e", window_ms=1000)
    assert plain.primary_basis(Channel.PUSH) is Basis.SEND
    assert plain.primary_basis(Channel.WEB_PUSH) is Basis.SEND
    assert plain.primary_basis(Channel.EMAIL) is Basis.SEND
    assert plain.primary_basis(Channel.KAKAO) is Basis.SEND
    assert plain.primary_basis(Channel.SMS) is Basis.SEND
    assert plain.primary_basis(Channel.IN_APP) is Basis.CLICK


def test_primary_basis_follows_configuration() -> None:
    ev = parse_settings(doc(event(basis={"push": "click", "email": "send"}))).conversion_events[0]
    assert ev.primary_basis(Channel.PUSH) is Basis.CLICK
    assert ev.primary_basis(Channel.EMAIL) is Basis.SEND
    assert ev.primary_basis(Channel.WEB_PUSH) is Basis.SEND  # not configured: the send
    assert ev.primary_basis(Channel.IN_APP) is Basis.CLICK
    assert ev.primary_basis(Channel.KAKAO) is Basis.SEND


# --- SettingsBook --------------------------------------------------------------------------------


def settings(project: str, version: int, name: str = "purchase") -> ProjectSettings:
    return parse_settings(doc(event(name=name), project_id=project, version=version))


def test_settings_book_keeps_the_highest_version() -> None:
    book = SettingsBook()
    assert book.get("p") is None
    assert book.put(settings("p", 2, "v2"))
    assert not book.put(settings("p", 1, "v1"))  # older: ignored
    assert not book.put(settings("p", 2, "other"))  # same version: ignored
    got = book.get("p")
    assert got is not None
    assert got.version == 2
    assert got.conversion_events[0].name == "v2"
    assert book.put(settings("p", 3, "v3"))
    got = book.get("p")
    assert got is not None
    assert got.conversion_events[0].name == "v3"


def test_settings_book_initial_and_projects() -> None:
    book = SettingsBook([settings("b", 5, "new"), settings("a", 1), settings("b", 4, "old")])
    assert book.projects() == ["a", "b"]
    got = book.get("b")
    assert got is not None
    assert got.version == 5
    assert got.conversion_events[0].name == "new"
