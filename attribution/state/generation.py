"""Lost-state detection: Redis holds a generation marker (one per hash slot on a cluster).

A Redis that restarted without persistence, was flushed, or lost a cluster node lost markers with
the state. A worker that finds markers missing while its consumer group has committed offsets
refuses to run: the offsets say "already counted" for events whose state is gone, so carrying on
would publish wrong counts. ``attribution rebuild`` replays the inputs into a fresh generation.

A generation names the layout of the state it holds (``v<LAYOUT>-<id>``): a worker refuses state
written in a layout it cannot read (an upgrade across a layout change needs a rebuild), instead of
misreading it. Layout 1 (generations without a ``v`` prefix) kept user states in hashes; layout 2
kept each as one string ``<fence>|<msgpack UserState>``; layout 3 keeps the same string with the
compact wire form of ``attribution.core.user_state`` (ids once per user, times as deltas).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from attribution.errors import LostState
from attribution.state.base import Store

REBUILD_HINT = "stop the workers and run `attribution rebuild` (see README, Guarantees)"
LAYOUT = 3  # bump whenever the meaning of a Redis key or value changes


def new_generation() -> str:
    return f"v{LAYOUT}-{uuid.uuid4().hex}"


def layout_of(generation: str) -> int:
    """The state layout a generation was written in (1 for generations that predate versioning)."""
    head, _, _ = generation.partition("-")
    return int(head[1:]) if head[:1] == "v" and head[1:].isdigit() else 1


def establish(store: Store, has_history: Callable[[], bool]) -> str:
    """The generation in force; a fresh one when Redis is empty and nothing was ever consumed."""
    found = store.generation()
    if None in found.values:
        if has_history():
            what = "no generation marker" if found.values == {None} else "generation markers are missing"
            raise LostState(
                f"Redis holds {what} but the consumer group has committed offsets: Redis lost its "
                f"data; {REBUILD_HINT}"
            )
        # nothing was ever consumed: a first start (or one that died while setting the markers)
        return verify(store, store.init_generation(new_generation()))
    return verify(store, None)


def verify(store: Store, expected: str | None) -> str:
    """Raise LostState unless every marker holds ``expected`` (or, if None, one common value)."""
    found = store.generation()
    missing = None in found.values
    if missing or found.value is None or (expected is not None and found.value != expected):
        if missing:
            what = f"generation markers are missing (of {found.total})"
        elif found.value is None:
            what = f"generation markers disagree: {sorted(str(v) for v in found.values)}"
        else:
            what = f"the state generation changed from {expected} to {found.value} (a rebuild ran)"
        raise LostState(f"Redis lost attribution state: {what}; {REBUILD_HINT}")
    if layout_of(found.value) != LAYOUT:
        raise LostState(
            f"Redis holds attribution state in layout {layout_of(found.value)} (generation "
            f"{found.value}), written by another version; this version reads layout {LAYOUT}: "
            f"{REBUILD_HINT}"
        )
    return found.value
