"""A dict-backed Store with the same semantics as the Lua scripts, for fast unit and property tests."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from attribution.core.money import add, fmt
from attribution.core.tally import channel_field
from attribution.state.base import CounterWrite, Generation, Journal, Loaded, OpenBatch, UserWrite


def _fence(b: str | None) -> tuple[int, int] | None:
    if not b:
        return None
    partition, seq = b.rstrip("-").split(":")
    return int(partition), int(seq)


class MemoryStore:
    """In-process twin of RedisStore (no TTLs: event-time eviction in the core is what tests observe)."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, bytes | str]] = {}
        self.journals: dict[int, Journal] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.dirty_members: dict[str, int] = {}
        self.appended: dict[str, tuple[int, int, int]] = {}
        self.projects: dict[str, set[tuple[str, str]]] = {}
        self.markers: str | None = None
        self.settings: dict[str, tuple[int, bytes]] = {}
        self.dead_letter_offsets: dict[str, int] = {}

    def load(self, user_keys: Sequence[str], partitions: Sequence[int]) -> Loaded:
        users: dict[str, tuple[bytes | None, str | None]] = {}
        for key in user_keys:
            h = self.users.get(key, {})
            blob, fence = h.get("s"), h.get("b")
            users[key] = (
                blob if isinstance(blob, bytes) else None,
                fence if isinstance(fence, str) else None,
            )
        heads = {p: Journal(j.seq, j.clock_ts) if (j := self.journals.get(p)) else None for p in partitions}
        return Loaded(users, heads)

    def read_journal(self, partition: int) -> Journal | None:
        return self.journals.get(partition)

    def open_batches(self, batches: Sequence[OpenBatch]) -> dict[int, int | None]:
        out: dict[int, int | None] = {}
        for b in batches:
            j = self.journals.get(b.partition)
            seq = j.seq if j else 0
            if seq != b.expected_seq:
                out[b.partition] = None
                continue
            clock = max(j.clock_ts if j else 0, b.clock_ts)
            self.journals[b.partition] = Journal(seq + 1, clock, b.body)
            out[b.partition] = seq + 1
        return out

    def write_users(self, writes: Sequence[UserWrite]) -> list[bool]:
        written = []
        for w in writes:
            h = self.users.setdefault(w.key, {})
            fence = _fence(h.get("b"))  # type: ignore[arg-type]
            ok = not (fence and fence[0] == w.partition and fence[1] >= w.seq)
            if ok:
                h["s"], h["b"] = w.blob, f"{w.partition}:{w.seq}"
            written.append(ok)
        return written

    def settle(self, partition: int, seq: int, user_keys: Sequence[str], ttl_ms: int) -> list[int]:
        mine = f"{partition}:{seq}"
        states = []
        for key in user_keys:
            h = self.users.setdefault(key, {})
            b = h.get("b")
            fence = _fence(b)  # type: ignore[arg-type]
            if b == mine:
                states.append(1)
            elif fence and fence[0] == partition and fence[1] > seq:
                states.append(2)
            else:
                h["b"] = mine + "-"
                states.append(0)
        return states

    def add_counters(self, counters: Sequence[CounterWrite], now_ms: int) -> None:
        for c in counters:
            h = self.hashes.setdefault(c.key, {})
            fence = f"f|{c.partition}"
            if c.seq > int(h.get(fence, "0")):
                for name, n in c.counts.items():
                    h[name] = str(int(h.get(name, "0")) + n)
                for name, amount in c.revenue.items():
                    h[name] = fmt(add(Decimal(h.get(name, "0")), amount))
                h["as_of"] = str(max(int(h.get("as_of", "0")), c.as_of_ts))
                for channel in c.channels:
                    h[channel_field(channel)] = "1"
                h["version"] = str(max(int(h.get("version", "0")) + 1, now_ms * 1000))
                h[fence] = str(c.seq)
        for c in counters:
            version = int(self.hashes[c.key].get("version", "0"))
            self.dirty_members[c.member] = max(version, self.dirty_members.get(c.member, version))
            self.projects.setdefault(c.project_key, set()).add((c.key, c.member))

    def dirty(self, limit: int) -> list[str]:
        return sorted(self.dirty_members, key=lambda m: (self.dirty_members[m], m))[:limit]

    def counters(self, keys: Sequence[str]) -> list[dict[str, str]]:
        return [dict(self.hashes.get(key, {})) for key in keys]

    def ack(self, published: Sequence[tuple[str, int, int]]) -> int:
        removed = 0
        for member, version, offset in published:
            last_version = version
            if version >= 0:
                last_offset, last_version, newest = self.appended.get(member, (-1, -1, -1))
                newest = max(newest, version)
                if offset > last_offset:
                    last_offset, last_version = offset, version
                self.appended[member] = (last_offset, last_version, newest)
                if last_version < newest:
                    self.dirty_members[member] = max(newest, self.dirty_members.get(member, newest))
            score = self.dirty_members.get(member)
            if score is not None and (version < 0 or score <= last_version):
                del self.dirty_members[member]
                removed += 1
        return removed

    def touch_project(self, project_key: str, now_ms: int) -> int:
        marked = 0
        for key, member in sorted(self.projects.get(project_key, set())):
            h = self.hashes.get(key)
            if h:
                version = max(int(h["version"]) + 1, now_ms * 1000)
                h["version"] = str(version)
                self.dirty_members[member] = max(version, self.dirty_members.get(member, version))
                marked += 1
        return marked

    def save_settings(self, project_id: str, version: int, document: bytes) -> bool:
        kept = self.settings.get(project_id)
        if kept is not None and kept[0] >= version:
            return False
        self.settings[project_id] = (version, document)
        return True

    def settings_documents(self) -> list[bytes]:
        return [doc for _, doc in self.settings.values()]

    def dead_lettered(self, stream: str) -> int:
        return self.dead_letter_offsets.get(stream, -1)

    def mark_dead_lettered(self, stream: str, offset: int) -> None:
        self.dead_letter_offsets[stream] = max(offset, self.dead_lettered(stream))

    def generation(self) -> Generation:
        return Generation(frozenset([self.markers]), 1)

    def init_generation(self, value: str) -> str:
        if self.markers is None:
            self.markers = value
        return self.markers
