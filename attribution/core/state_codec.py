"""The user state's wire form (state layout 3, ``user_state.Wire``): each id once per user, touches
and the rest referring to them by index, times as deltas from ``expires_ts``.

Apart from ``user_state`` because it runs for every changed user of every batch: compiled with mypyc
(``attribution.compiled``), which cannot compile a module that defines msgspec structs.
"""

from __future__ import annotations

from typing import Any

from attribution.core.user_state import (
    KINDS,
    Credit,
    GoalMark,
    Touch,
    UserState,
    Wire,
    decode_wire,
    encode_wire,
)

_NK = len(KINDS)  # a touch's campaign and kind share one int: campaign * _NK + kind (kind < _NK)


def _ref(ids: dict[str, int], s: str) -> int:
    """The index of ``s`` in the user's string table, appended when new."""
    i = ids.get(s)
    if i is None:
        i = ids[s] = len(ids)
    return i


def encode_state(state: UserState) -> bytes:
    """The state as stored in Redis (layout 3, ``Wire``); ``decode_state`` gives it back exactly."""
    ids: dict[str, int] = {}
    exp: int = state.expires_ts
    nk = _NK
    touches: list[Any] = []
    for t in state.touches:
        touches.append(_ref(ids, t.campaign) * nk + t.kind)
        touches.append(t.ts - exp)
        touches.append(t.event_id)
        touches.append(_ref(ids, t.message_id))
        touches.append(_ref(ids, t.device_id))
    reached: list[int] = []
    for campaign, n in state.reached.items():
        reached.append(_ref(ids, campaign))
        reached.append(n)
    links_out: list[int] = []
    for device, times in state.links_out.items():
        links_out.append(_ref(ids, device))
        links_out.append(len(times))
        for ts in times:
            links_out.append(ts - exp)
    links_sent: list[int] = []
    for device, ts in state.links_sent.items():
        links_sent.append(_ref(ids, device))
        links_sent.append(ts - exp)
    goals: list[Any] = []
    for g in state.goals:
        goals += (_ref(ids, g.name), g.ts - exp, g.event_id, _ref(ids, g.device_id), g.amount, g.currency)
    credits: list[Any] = []
    for c in state.credits:
        credits += (
            _ref(ids, c.campaign),
            _ref(ids, c.event),
            _ref(ids, c.basis),
            c.goal_ts - exp,
            c.goal_event_id,
            _ref(ids, c.device_id),
            c.touch_ts - exp,
            c.touch_event_id,
            _ref(ids, c.message_id),
            _ref(ids, c.channel),
            c.amount,
            c.currency,
        )
    return encode_wire(
        Wire(
            list(ids),
            exp,
            touches,
            reached,
            links_out,
            links_sent,
            state.fences,
            goals,
            credits,
            state.settings_version,
            state.failed,
            state.marks,
            state.visit_ts,
            state.perm,
            state.perm_ts,
            state.perm_id,
            state.bucket,
            state.sessions,
            state.links,
            state.lent,
            state.shared,
            state.pinned,
            state.withdrawn,
        )
    )


def decode_state(blob: bytes | None) -> UserState:
    """The state ``encode_state`` wrote (an empty one for a missing key)."""
    if not blob:
        return UserState()
    w = decode_wire(blob)
    s, exp = w.strs, w.expires_ts
    f = w.touches
    touches = [
        Touch(s[ck // _NK], ck % _NK, dt + exp, e, s[m], s[d])
        for ck, dt, e, m, d in zip(f[::5], f[1::5], f[2::5], f[3::5], f[4::5], strict=True)
    ]
    f = w.reached
    reached = {s[k]: n for k, n in zip(f[::2], f[1::2], strict=True)}
    links_out: dict[str, list[int]] = {}
    f, i, end = w.links_out, 0, len(w.links_out)
    while i < end:
        j = i + 2 + f[i + 1]
        links_out[s[f[i]]] = [dt + exp for dt in f[i + 2 : j]]
        i = j
    f = w.links_sent
    links_sent = {s[d]: dt + exp for d, dt in zip(f[::2], f[1::2], strict=True)}
    f = w.goals
    goals = [
        GoalMark(s[n], dt + exp, e, s[d], a, c)
        for n, dt, e, d, a, c in zip(f[::6], f[1::6], f[2::6], f[3::6], f[4::6], f[5::6], strict=True)
    ]
    f = w.credits
    credits = [
        Credit(
            s[f[i]],
            s[f[i + 1]],
            s[f[i + 2]],
            f[i + 3] + exp,
            f[i + 4],
            s[f[i + 5]],
            f[i + 6] + exp,
            f[i + 7],
            s[f[i + 8]],
            s[f[i + 9]],
            f[i + 10],
            f[i + 11],
        )
        for i in range(0, len(f), 12)
    ]
    return UserState(
        w.fences,
        touches,
        goals,
        w.failed,
        reached,
        credits,
        exp,
        w.settings_version,
        w.marks,
        w.visit_ts,
        w.perm,
        w.perm_ts,
        w.perm_id,
        w.bucket,
        w.sessions,
        w.links,
        w.lent,
        links_out,
        links_sent,
        w.shared,
        w.pinned,
        w.withdrawn,
    )
