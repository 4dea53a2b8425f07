"""Poison pills: an input that makes the core or the state script fail costs only its own user's events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from attribution.core import user as user_rules
from attribution.errors import BadInput
from attribution.state.base import UserWrite
from attribution.state.memory import MemoryStore
from tests.support.harness import Run
from tests.support.scenarios import PROJECT, goal, send, settings


def batch(run: Run) -> list[Any]:
    return run.records(
        [
            send("s1", "c1", "d1", 0, user="u1"),
            send("s2", "c1", "dp", 0, user="poison"),
            goal("g2", "signup", "dp", 5, user="poison"),
            send("s3", "c1", "d3", 0, user="u3"),
            goal("g3", "signup", "d3", 5, user="u3"),
        ]
    )


def test_a_user_whose_events_make_the_core_raise_is_dead_lettered_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = user_rules.apply

    def apply(state: Any, project: str, user_key: str, *args: Any) -> Any:
        if user_key == "poison":
            raise ZeroDivisionError("boom")
        return real(state, project, user_key, *args)

    monkeypatch.setattr(user_rules, "apply", apply)
    run = Run([settings()])
    records = batch(run)
    run.feed(records)
    assert sorted(orjson.loads(d["raw"])["event_id"] for d in run.dead) == ["g2", "s2"]  # poison's only
    assert all("processing failed (ZeroDivisionError: boom)" in d["error"] for d in run.dead)
    t = run.tally(PROJECT, "c1")
    assert (t["sends"], t["events"]["signup"]["send"]["conversions"]) == (2, 1)
    run.feed(records)  # re-delivered after a crash: the others are fenced, nothing counts twice
    assert run.tally(PROJECT, "c1")["sends"] == 2


class RefusingStore(MemoryStore):
    """The state script refuses any batch that writes the poison user (as a Lua error would)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write_users(self, writes: Sequence[UserWrite]) -> list[bool]:
        # refused after the batch's journal was opened: the halves must recover it first
        self.calls += 1
        if any("poison" in w.key for w in writes):
            raise BadInput("user_script:28: bad blob")
        return super().write_users(writes)


def test_a_batch_the_state_script_refuses_is_halved_until_the_poison_user_is_found() -> None:
    store = RefusingStore()
    run = Run([settings()], store=store)
    run.feed(batch(run))
    assert sorted(orjson.loads(d["raw"])["event_id"] for d in run.dead) == ["g2", "s2"]
    assert all("state script refused" in d["error"] for d in run.dead)
    t = run.tally(PROJECT, "c1")
    assert (t["sends"], t["events"]["signup"]["send"]["conversions"]) == (2, 1)
    # [u1, poison, u3] refused, [u1] ok, [poison, u3] refused, [poison] refused, [u3] ok
    assert store.calls == 5
