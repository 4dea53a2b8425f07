"""A dict-backed Store with the same semantics as the Lua scripts, for fast unit and property tests."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from attribution.core.money import add, fmt
from attribution.errors import StateConflict
from attribution.state.base import CounterWrite, Loaded, UserWrite


class MemoryStore:
    """In-process twin of RedisStore (no TTLs: event-time eviction in the core is what tests observe)."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[int, bytes]] = {}
        self.clocks: dict[str, int] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.dirty_members: dict[str, int] = {}
        self.projects: dict[str, set[tuple[str, str]]] = {}
        self.applies = 0

    def load(self, user_keys: Sequence[str], clock_keys: Sequence[str]) -> Loaded:
        users: dict[str, tuple[int, bytes | None]] = {}
        for key in user_keys:
            version, blob = self.users.get(key, (0, None))
            users[key] = (version, blob)
        return Loaded(users, {key: self.clocks.get(key) for key in clock_keys})

    def apply(
        self,
        users: Sequence[UserWrite],
        clocks: dict[str, int],
        counters: Sequence[CounterWrite],
        now_ms: int,
    ) -> None:
        for u in users:
            if self.users.get(u.key, (0, b""))[0] != u.expected_version:
                raise StateConflict(f"state of {u.key} changed since it was read")
        self.applies += 1
        for key, ts in clocks.items():
            self.clocks[key] = max(ts, self.clocks.get(key, ts))
        for u in users:
            self.users[u.key] = (u.expected_version + 1, u.blob)
        for c in counters:
            h = self.hashes.setdefault(c.key, {})
            for name, n in c.counts.items():
                h[name] = str(int(h.get(name, "0")) + n)
            for name, amount in c.revenue.items():
                h[name] = fmt(add(Decimal(h.get(name, "0")), amount))
            h["as_of"] = str(max(int(h.get("as_of", "0")), c.as_of_ts))
            if c.channel:
                h.setdefault("channel", c.channel)
            h["version"] = str(max(int(h.get("version", "0")) + 1, now_ms * 1000))
            self.dirty_members.setdefault(c.member, now_ms)
            self.projects.setdefault(c.project_key, set()).add((c.key, c.member))

    def dirty(self, limit: int) -> list[str]:
        return sorted(self.dirty_members, key=lambda m: (self.dirty_members[m], m))[:limit]

    def counters(self, keys: Sequence[str]) -> list[dict[str, str]]:
        return [dict(self.hashes.get(key, {})) for key in keys]

    def ack(self, published: Sequence[tuple[str, str, int]], now_ms: int = 0) -> int:
        removed = 0
        for key, member, version in published:
            if int(self.hashes.get(key, {}).get("version", "0")) > version:
                self.dirty_members.setdefault(member, now_ms)
            elif member in self.dirty_members:
                del self.dirty_members[member]
                removed += 1
        return removed

    def touch_project(self, project_key: str, now_ms: int) -> int:
        marked = 0
        for key, member in sorted(self.projects.get(project_key, set())):
            h = self.hashes.get(key)
            if h:
                h["version"] = str(max(int(h["version"]) + 1, now_ms * 1000))
                self.dirty_members.setdefault(member, now_ms)
                marked += 1
        return marked
