"""The aligner: per partition, the three input topics are released in event-time order.

Each topic-partition is a FIFO of decoded events. Per partition the aligner releases the head with the
smallest event time, and stops while a topic-partition of that partition is empty and not at its end
(it may still deliver earlier events). Once the partition has waited ``max_idle_ms`` for such a quiet
topic-partition it goes on, but no further than grace past the event time the quiet one last delivered
(and not at all for one that delivered nothing since it was assigned).

The properties below drive an ``Aligner`` with generated topic-partitions delivered in arbitrary chunks
(like consume batches), with end-of-partition marks and a controllable clock, and compare what it
does with a plain model of what was delivered and what is still buffered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.core.model import Event, Located, Position
from attribution.runtime.align import Aligner, Tp
from tests.support.scenarios import click, goal, send

SENDS, CLICKS, GOALS = "t.sends", "t.clicks", "t.goals"
TOPICS = (SENDS, CLICKS, GOALS)
IDLE_MS = 1_000
GRACE_MS = 10
EXAMPLES = settings(max_examples=200, deadline=None)

Key = tuple[str, int, int]  # (topic, partition, offset): identifies a record


# --- builders ------------------------------------------------------------------------------------


def event(topic: str, eid: str, ts: int) -> Event:
    if topic == SENDS:
        return send(eid, "c1", "d1", ts)
    if topic == CLICKS:
        return click(eid, "c1", "d1", ts)
    return goal(eid, "purchase", "d1", ts)


def located(tp: Tp, offset: int, ts: int) -> Located:
    topic, partition = tp
    return Located(event(topic, f"{topic}-{partition}-{offset}", ts), Position(topic, partition, offset))


def key(loc: Located) -> Key:
    return (loc.pos.topic, loc.pos.partition, loc.pos.offset)


def tp_of(loc: Located) -> Tp:
    return (loc.pos.topic, loc.pos.partition)


def tss(locs: list[Located]) -> list[int]:
    return [loc.event.ts for loc in locs]


def aligner(partitions: int = 1, max_buffered: int = 100) -> Aligner:
    a = Aligner(max_idle_ms=IDLE_MS, max_buffered=max_buffered, grace_ms=GRACE_MS)
    a.assign((topic, p) for topic in TOPICS for p in range(partitions))
    return a


def feed(a: Aligner, tp: Tp, *ts: int, first_offset: int = 0) -> list[Located]:
    """Hands the aligner one event per timestamp, at consecutive offsets of ``tp``."""
    locs = [located(tp, first_offset + i, t) for i, t in enumerate(ts)]
    for loc in locs:
        a.add(tp, loc.pos.offset, loc)
    return locs


# --- generated inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    offset: int
    located: Located | None  # None: a dead letter, consumed but never released


@dataclass(frozen=True)
class Step:
    """One consume batch: the next ``take`` records of ``tp``, maybe its end, then the clock moves."""

    tp: Tp
    take: int
    end: bool
    advance_ms: int


@dataclass(frozen=True)
class Scenario:
    records: dict[Tp, list[Record]]
    steps: list[Step]
    max_buffered: int
    grace_ms: int

    @property
    def partitions(self) -> list[int]:
        return sorted({p for _, p in self.records})

    def events(self) -> set[Key]:
        return {key(r.located) for recs in self.records.values() for r in recs if r.located is not None}


@st.composite
def topic_partitions(draw: st.DrawFn, ordered: bool = True) -> dict[Tp, list[Record]]:
    """Three topics x 1-3 partitions; increasing offsets, event times non-decreasing when ``ordered``."""
    records: dict[Tp, list[Record]] = {}
    for p in range(draw(st.integers(1, 3))):
        for topic in TOPICS:
            tp = (topic, p)
            n = draw(st.integers(0, 5))
            if ordered:
                ts, times = draw(st.integers(0, 5)), []
                for gap in draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)):
                    ts += gap
                    times.append(ts)
            else:
                times = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))
            # one draw per record for the gap to the next offset (1-3) and a dead letter (1 in 4)
            codes = draw(st.lists(st.integers(0, 11), min_size=n, max_size=n))
            offset, recs = draw(st.integers(0, 3)), []
            for t, code in zip(times, codes, strict=True):
                recs.append(Record(offset, None if code >= 9 else located(tp, offset, t)))
                offset += 1 + code % 3
            records[tp] = recs
    return records


@st.composite
def scenarios(draw: st.DrawFn, ordered: bool = True) -> Scenario:
    records = draw(topic_partitions(ordered))
    tps = sorted(records)
    remaining = {tp: len(recs) for tp, recs in records.items()}
    steps = []
    for _ in range(draw(st.integers(0, 20))):
        tp = draw(st.sampled_from(tps))
        take = draw(st.integers(0, remaining[tp]))
        remaining[tp] -= take
        # an end mark only once the topic-partition was read to its (final) end
        end = remaining[tp] == 0 and draw(st.booleans())
        advance = draw(st.sampled_from([0, 0, 1, IDLE_MS // 2, IDLE_MS - 1, IDLE_MS]))
        steps.append(Step(tp, take, end, advance))
    return Scenario(records, steps, draw(st.integers(1, 4)), draw(st.sampled_from([0, 2, 1_000])))


# --- driving the aligner next to a model ----------------------------------------------------------


@dataclass
class Release:
    """One ``release`` call: the clock, what was buffered and at its end before it, what came out."""

    now: float
    before: dict[Tp, list[Located]]
    ended: frozenset[Tp]
    last_ts: dict[Tp, int]  # event time of the last event each topic-partition delivered since assigned
    reassigned: frozenset[int]  # partitions revoked and assigned again since the previous release
    out: list[Located]

    def after(self, tp: Tp) -> list[Located]:
        gone = {key(loc) for loc in self.out}
        return [loc for loc in self.before[tp] if key(loc) not in gone]


@dataclass
class Sim:
    """Plays a scenario against an ``Aligner`` and models what it holds (delivered, not released)."""

    scenario: Scenario
    still_clock: bool = False
    now: float = 0.0
    aligner: Aligner = field(init=False)
    cursor: dict[Tp, int] = field(init=False)
    pending: dict[Tp, deque[Located]] = field(init=False)
    ended: set[Tp] = field(default_factory=set)
    last_added: dict[Tp, int] = field(default_factory=dict)
    last_ts: dict[Tp, int] = field(default_factory=dict)
    reassigned: set[int] = field(default_factory=set)
    log: list[Release] = field(default_factory=list)
    probes: list[Callable[[], None]] = field(default_factory=list)  # run after every add/end/release

    def __post_init__(self) -> None:
        self.aligner = Aligner(
            max_idle_ms=IDLE_MS,
            max_buffered=self.scenario.max_buffered,
            grace_ms=self.scenario.grace_ms,
        )
        self.aligner.assign(self.scenario.records)
        self.cursor = dict.fromkeys(self.scenario.records, 0)
        self.pending = {tp: deque() for tp in self.scenario.records}

    def tps(self, partition: int) -> list[Tp]:
        return [tp for tp in self.scenario.records if tp[1] == partition]

    def deliver(self, tp: Tp, take: int) -> None:
        recs = self.scenario.records[tp]
        for rec in recs[self.cursor[tp] : self.cursor[tp] + take]:
            self.aligner.add(tp, rec.offset, rec.located)
            self.ended.discard(tp)
            self.last_added[tp] = rec.offset
            if rec.located is not None:
                self.pending[tp].append(rec.located)
                self.last_ts[tp] = rec.located.event.ts
        self.cursor[tp] = min(len(recs), self.cursor[tp] + take)
        self.observe()

    def end(self, tp: Tp) -> None:
        assert self.cursor[tp] == len(self.scenario.records[tp]), "end marks only after the last record"
        self.aligner.end_reached(tp)
        self.ended.add(tp)
        self.observe()

    def release(self) -> Release:
        before = {tp: list(q) for tp, q in self.pending.items()}
        reassigned, self.reassigned = frozenset(self.reassigned), set()
        r = Release(
            self.now,
            before,
            frozenset(self.ended),
            dict(self.last_ts),
            reassigned,
            self.aligner.release(self.now),
        )
        for loc in r.out:
            q = self.pending.get(tp_of(loc), deque())
            if key(loc) in {key(x) for x in q}:  # otherwise a repeat or never delivered: tests check
                self.pending[tp_of(loc)] = deque(x for x in q if key(x) != key(loc))
        self.log.append(r)
        self.observe()
        return r

    def step(self, s: Step) -> None:
        self.deliver(s.tp, s.take)
        if s.end and self.cursor[s.tp] == len(self.scenario.records[s.tp]):
            self.end(s.tp)
        self.release()
        if not self.still_clock:
            self.now += s.advance_ms

    def play(self, steps: list[Step] | None = None) -> None:
        for s in self.scenario.steps if steps is None else steps:
            self.step(s)

    def drain(self) -> Release:
        """Deliver everything left, mark every topic-partition at its end, release once more."""
        for tp, recs in self.scenario.records.items():
            self.deliver(tp, len(recs) - self.cursor[tp])
            self.end(tp)
        return self.release()

    def revoke(self, tps: set[Tp]) -> None:
        """A rebalance: revoke ``tps``, get them back, re-read them from the offset committed before."""
        committed = self.aligner.commit_offsets()
        self.aligner.revoke(tps)
        for tp in tps:
            self.pending[tp].clear()
            self.ended.discard(tp)
            self.last_added.pop(tp, None)
            self.last_ts.pop(tp, None)
            self.reassigned.add(tp[1])
            start = committed.get(tp, -1)
            self.cursor[tp] = sum(1 for r in self.scenario.records[tp] if r.offset < start)
        self.aligner.assign(tps)

    def observe(self) -> None:
        for probe in self.probes:
            probe()

    def expected_commits(self) -> dict[Tp, int]:
        return {
            tp: q[0].pos.offset if (q := self.pending[tp]) else last + 1
            for tp, last in self.last_added.items()
        }

    def released(self) -> list[Located]:
        return [loc for r in self.log for loc in r.out]


def assert_waits_as_specified(sim: Sim) -> None:
    """Replays the log of releases against the waiting rules (see the test below)."""
    waiting: dict[int, float] = {}
    for r in sim.log:
        for p in r.reassigned:
            waiting.pop(p, None)  # a new assignment, a new wait
        for p in sim.scenario.partitions:
            held = sorted(tss([loc for tp in sim.tps(p) for loc in r.before[tp]]))
            out = tss([loc for loc in r.out if loc.pos.partition == p])
            quiet = [tp for tp in sim.tps(p) if not r.before[tp] and tp not in r.ended]
            if not held:
                waiting.pop(p, None)
                assert out == []
            elif not quiet:
                waiting.pop(p, None)
                assert out, "nothing to wait for, yet nothing released"
                # it stops only when a topic-partition that may still receive earlier events ran dry
                if any(r.after(tp) for tp in sim.tps(p)):
                    assert any(not r.after(tp) and tp not in r.ended for tp in sim.tps(p))
            elif r.now - waiting.setdefault(p, r.now) < IDLE_MS:
                assert out == [], f"partition {p} released while waiting since {waiting[p]}, at {r.now}"
            elif any(tp not in r.last_ts for tp in quiet):
                assert out == [], "went on without having heard from a quiet topic-partition"
            else:
                limit = min(r.last_ts[tp] for tp in quiet) + sim.scenario.grace_ms
                assert out == held[: len(out)], "not the earliest events, in order"
                assert all(ts <= limit for ts in out), "further than grace past a quiet topic-partition"
                assert bool(out) == (held[0] <= limit)


def assert_released_within_grace(sim: Sim) -> None:
    for p in sim.scenario.partitions:
        latest = None
        for loc in sim.released():
            if loc.pos.partition == p:
                if latest is not None:
                    assert loc.event.ts >= latest.event.ts - sim.scenario.grace_ms, (
                        f"{key(loc)} at {loc.event.ts} released after {key(latest)} at {latest.event.ts}"
                    )
                if latest is None or loc.event.ts > latest.event.ts:
                    latest = loc


# --- properties ----------------------------------------------------------------------------------


@EXAMPLES
@given(scenarios(ordered=False))
def test_each_topic_partition_is_released_in_offset_order_exactly_once(scenario: Scenario) -> None:
    """FIFO per topic-partition holds whatever the event times, the batches and the clock."""
    sim = Sim(scenario)
    sim.play()
    last = sim.drain()
    for r in sim.log:
        held = {key(loc) for q in r.before.values() for loc in q}
        assert all(key(loc) in held for loc in r.out), "released before it was delivered, or twice"
    assert {key(loc) for loc in last.out} == {key(loc) for q in last.before.values() for loc in q}
    released = [key(loc) for loc in sim.released()]
    assert len(released) == len(set(released)), "released twice"
    assert set(released) == scenario.events(), "lost, or a dead letter released"
    for tp in scenario.records:
        offsets = [o for t, p, o in released if (t, p) == tp]
        assert offsets == sorted(offsets), f"{tp} released out of offset order"
    assert all(sim.aligner.buffered(tp) == 0 for tp in scenario.records)


@EXAMPLES
@given(scenarios())
def test_no_event_already_delivered_with_an_earlier_time_is_left_behind(scenario: Scenario) -> None:
    """Whatever the clock: each release is in event-time order per partition, and nothing of that
    partition still buffered after it is earlier than what it released."""
    sim = Sim(scenario)
    sim.play()
    sim.drain()
    for r in sim.log:
        for p in scenario.partitions:
            out = tss([loc for loc in r.out if loc.pos.partition == p])
            assert out == sorted(out)
            left = tss([loc for tp in sim.tps(p) for loc in r.after(tp)])
            assert not out or not left or max(out) <= min(left)


@EXAMPLES
@given(scenarios())
def test_with_a_still_clock_each_partition_is_released_in_event_time_order(scenario: Scenario) -> None:
    """No idle timeout, end marks only at the true end: across all releases, every partition comes
    out sorted by event time, as if the three topics had been read live."""
    sim = Sim(scenario, still_clock=True)
    sim.play()
    sim.drain()
    for p in scenario.partitions:
        got = tss([loc for loc in sim.released() if loc.pos.partition == p])
        assert got == sorted(got)
        everything = [r.located for tp in sim.tps(p) for r in scenario.records[tp] if r.located]
        assert got == sorted(tss(everything))


@EXAMPLES
@given(scenarios(), st.booleans())
def test_no_event_is_released_more_than_grace_after_a_later_one(
    scenario: Scenario, still_clock: bool
) -> None:
    """Whatever the clock: per partition, nothing released later is earlier than grace before
    something already released (so with no grace, or a still clock, the order is exact)."""
    sim = Sim(scenario, still_clock=still_clock)
    sim.play()
    sim.drain()
    assert_released_within_grace(sim)


@EXAMPLES
@given(scenarios(), st.booleans())
def test_a_partition_waits_max_idle_ms_for_a_quiet_topic_partition_then_goes_on_within_grace(
    scenario: Scenario, still_clock: bool
) -> None:
    """A partition with a quiet topic-partition (empty, not at its end) releases nothing until it has
    waited ``max_idle_ms``, counted from the first release that found it waiting. Then it releases its
    earliest events, none later than grace past what the quiet ones last delivered, all of those if
    any; nothing while a quiet one delivered nothing since it was assigned. Without a quiet
    topic-partition it always makes progress, and stops only where one runs dry."""
    sim = Sim(scenario, still_clock=still_clock)
    sim.play()
    sim.drain()
    assert_waits_as_specified(sim)


@EXAMPLES
@given(topic_partitions(), st.data())
def test_idle_topic_partition_holds_back_its_partition_until_max_idle_ms(
    records: dict[Tp, list[Record]], data: st.DataObject
) -> None:
    """Every other topic-partition is read to its end; the quiet one delivers its first records only.
    Other partitions go on; this one waits from t0 for exactly ``max_idle_ms``, then goes on within
    grace of the quiet one's last event, and releases the rest once the quiet one is read to its end."""
    quiet: Tp = data.draw(st.sampled_from(sorted(records)), label="quiet")
    first = data.draw(st.integers(0, len(records[quiet])), label="delivered first")
    grace = data.draw(st.sampled_from([0, 2, 1_000]), label="grace_ms")
    t0 = data.draw(st.integers(0, 10**9), label="t0")
    sim = Sim(Scenario(records, [], max_buffered=100, grace_ms=grace), now=t0)
    sim.deliver(quiet, first)
    for tp, recs in records.items():
        if tp != quiet:
            sim.deliver(tp, len(recs))
            sim.end(tp)
    p = quiet[1]
    others = {key(loc) for tp, q in sim.pending.items() if tp[1] != p for loc in q}

    # up to where the quiet topic-partition runs dry; the other partitions are not held back
    assert {key(loc) for loc in sim.release().out if loc.pos.partition != p} == others
    assert sim.release().out == []  # the wait starts at t0
    held = [loc for tp in sim.tps(p) for loc in sim.pending[tp]]
    sim.now = t0 + IDLE_MS - 1
    assert sim.release().out == []
    sim.now = t0 + IDLE_MS
    late = sim.release().out
    if quiet in sim.last_ts:
        limit = sim.last_ts[quiet] + grace
        assert sorted(map(key, late)) == sorted(key(loc) for loc in held if loc.event.ts <= limit)
    else:
        assert late == [], "nothing heard from the quiet topic-partition since it was assigned"
    assert tss(late) == sorted(tss(late))
    sim.now = t0 + 100 * IDLE_MS
    assert sim.release().out == [], "no further while the quiet topic-partition says nothing"
    # the rest of the quiet topic-partition arrives: everything is released once it is at its end
    sim.deliver(quiet, len(records[quiet]))
    sim.end(quiet)
    rest = sim.release().out
    assert tss(rest) == sorted(tss(rest))
    assert {key(loc) for loc in [*late, *rest]} == {key(loc) for loc in held} | {
        key(r.located) for r in records[quiet][first:] if r.located
    }


@EXAMPLES
@given(scenarios(ordered=False))
def test_commit_offset_is_the_first_unprocessed_offset(scenario: Scenario) -> None:
    """After every add, end mark and release: the first buffered offset of a topic-partition, or the
    last consumed offset + 1 when nothing is buffered (dead letters included); never going back."""
    sim = Sim(scenario)
    previous: dict[Tp, int] = {}

    def check() -> None:
        nonlocal previous
        got = sim.aligner.commit_offsets()
        assert got == sim.expected_commits()
        for tp, q in sim.pending.items():
            if q:
                assert got[tp] <= q[0].pos.offset
        assert all(got[tp] >= o for tp, o in previous.items()), "a commit offset went back"
        previous = got

    sim.probes.append(check)
    sim.play()
    sim.drain()
    assert sim.aligner.commit_offsets() == {
        tp: recs[-1].offset + 1 for tp, recs in scenario.records.items() if recs
    }


@EXAMPLES
@given(scenarios(), st.data())
def test_revoke_forgets_only_the_revoked_topic_partitions_and_rereading_them_loses_nothing(
    scenario: Scenario, data: st.DataObject
) -> None:
    """A rebalance mid-way: the revoked topic-partitions' buffers, end marks and offsets are gone, the
    others' untouched; re-reading the revoked ones from their commit offset releases every event once."""
    cut = data.draw(st.integers(0, len(scenario.steps)), label="cut")
    revoked = set(
        data.draw(st.lists(st.sampled_from(sorted(scenario.records)), unique=True), label="revoked")
    )
    sim = Sim(scenario)
    sim.play(scenario.steps[:cut])
    a = sim.aligner
    buffered = {tp: a.buffered(tp) for tp in scenario.records}
    commits, ended = a.commit_offsets(), set(a.at_end)

    sim.revoke(revoked)
    for tp in revoked:
        assert a.buffered(tp) == 0
        assert tp not in a.commit_offsets()
        assert tp not in a.at_end
    for tp in set(scenario.records) - revoked:
        assert a.buffered(tp) == buffered[tp]
        assert a.commit_offsets().get(tp) == commits.get(tp)
        assert (tp in a.at_end) == (tp in ended)

    sim.play(scenario.steps[cut:])
    sim.drain()
    released = [key(loc) for loc in sim.released()]
    assert len(released) == len(set(released)), "released twice"
    assert set(released) == scenario.events(), "lost"
    assert_waits_as_specified(sim)  # what revoked topic-partitions last delivered is forgotten too
    assert_released_within_grace(sim)


@EXAMPLES
@given(scenarios(ordered=False))
def test_over_limit_reports_topic_partitions_holding_max_buffered_events(scenario: Scenario) -> None:
    sim = Sim(scenario)

    def check() -> None:
        limit = scenario.max_buffered
        assert sim.aligner.over_limit() == {tp for tp, q in sim.pending.items() if len(q) >= limit}
        assert all(sim.aligner.buffered(tp) == len(q) for tp, q in sim.pending.items())

    sim.probes.append(check)
    sim.play()
    sim.drain()
    assert sim.aligner.over_limit() == set()


# --- examples ------------------------------------------------------------------------------------


def test_backlog_of_three_topics_is_released_interleaved_by_event_time() -> None:
    a = aligner()
    feed(a, (SENDS, 0), 1, 5, 9)
    feed(a, (CLICKS, 0), 2, 6)
    feed(a, (GOALS, 0), 3, 7)
    for topic in TOPICS:
        a.end_reached((topic, 0))
    out = a.release(0)
    assert [(loc.pos.topic, loc.event.ts) for loc in out] == [
        (SENDS, 1), (CLICKS, 2), (GOALS, 3), (SENDS, 5), (CLICKS, 6), (GOALS, 7), (SENDS, 9),
    ]  # fmt: skip


def test_goal_waits_for_clicks_that_may_still_come() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))  # nothing to send: not worth waiting for
    [g] = feed(a, (GOALS, 0), 100)
    assert a.release(0) == []  # the clicks topic-partition is empty but not at its end

    [k] = feed(a, (CLICKS, 0), 50)
    assert a.release(0) == [k]  # the click is earlier; the goal waits for the next click or the end

    a.end_reached((CLICKS, 0))
    assert a.release(0) == [g]


def test_after_max_idle_ms_a_partition_goes_on_up_to_grace_past_the_quiet_topic() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    [c100] = feed(a, (CLICKS, 0), 100)
    g90, g105, g111 = feed(a, (GOALS, 0), 90, 105, 111)
    a.end_reached((GOALS, 0))
    assert a.release(0) == [g90, c100]  # then the clicks run dry: the next may be earlier than 105
    assert a.release(5_000) == []  # the wait starts at the first release that has to wait
    assert a.release(5_000 + IDLE_MS - 1) == []
    assert a.release(5_000 + IDLE_MS) == [g105]  # a click still to come is at 100 or later: within grace
    assert a.release(60_000) == []  # 111 is further than grace past the last click
    [c120] = feed(a, (CLICKS, 0), 120, first_offset=1)
    assert a.release(60_000) == [g111, c120]


def test_the_topic_quiet_the_longest_bounds_how_far_a_partition_goes_on() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    a.end_reached((GOALS, 0))
    [c100] = feed(a, (CLICKS, 0), 100)
    assert a.release(0) == [c100]  # clicks run dry, having said 100
    [s50] = feed(a, (SENDS, 0), 50)
    assert a.release(0) == []
    assert a.release(IDLE_MS) == [s50]  # sends run dry too, having said 50
    g55, _, _ = feed(a, (GOALS, 0), 55, 65, 105)
    assert a.release(IDLE_MS) == [g55]  # still past the wait; no further than 50 + grace


def test_a_rebalance_restarts_the_wait_for_a_quiet_topic() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    [c100] = feed(a, (CLICKS, 0), 100)
    g90, g105 = feed(a, (GOALS, 0), 90, 105)
    a.end_reached((GOALS, 0))
    assert a.release(0) == [g90, c100]
    assert a.release(0) == []  # waiting for clicks since 0
    a.revoke([(SENDS, 0)])  # partition 0 of sends moves away and back
    a.assign([(SENDS, 0)])
    a.end_reached((SENDS, 0))
    assert a.release(IDLE_MS) == []  # a new wait, from here
    assert a.release(2 * IDLE_MS) == [g105]


def test_a_topic_never_heard_from_since_assignment_is_waited_for() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    [g] = feed(a, (GOALS, 0), 100)
    assert a.release(0) == []
    assert a.release(100 * IDLE_MS) == []  # no record, no end of partition: its first may be earlier
    a.end_reached((CLICKS, 0))
    assert a.release(100 * IDLE_MS) == [g]


def test_each_partition_is_aligned_on_its_own() -> None:
    a = aligner(partitions=2)
    for topic in TOPICS:
        a.end_reached((topic, 0))
    g0 = feed(a, (GOALS, 0), 100)
    feed(a, (GOALS, 1), 10)  # partition 1 waits for its sends and clicks
    assert a.release(0) == g0


def test_records_after_the_end_make_the_topic_partition_worth_waiting_for_again() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    a.end_reached((CLICKS, 0))
    feed(a, (CLICKS, 0), 10)  # the producer wrote more: the end mark no longer holds
    [g] = feed(a, (GOALS, 0), 100)
    assert [loc.event.ts for loc in a.release(0)] == [10]
    assert a.release(0) == []
    a.end_reached((CLICKS, 0))
    assert a.release(0) == [g]


def test_dead_letters_advance_the_commit_offset_but_are_never_released() -> None:
    a = aligner()
    for topic in TOPICS:
        a.end_reached((topic, 0))
    a.add((GOALS, 0), 0, None)
    assert a.release(0) == []
    assert a.commit_offsets() == {(GOALS, 0): 1}
    [g] = feed(a, (GOALS, 0), 100, first_offset=1)
    a.add((GOALS, 0), 2, None)
    assert a.commit_offsets() == {(GOALS, 0): 1}  # the event at 1 is not processed yet
    a.end_reached((GOALS, 0))
    assert a.release(0) == [g]
    assert a.commit_offsets() == {(GOALS, 0): 3}


def test_commit_offset_stops_at_the_first_buffered_event() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    feed(a, (CLICKS, 0), 10, first_offset=40)
    feed(a, (GOALS, 0), 20, 30, first_offset=7)
    assert a.commit_offsets() == {(CLICKS, 0): 40, (GOALS, 0): 7}
    a.release(0)  # the click, then clicks run dry
    assert a.commit_offsets() == {(CLICKS, 0): 41, (GOALS, 0): 7}
    a.end_reached((CLICKS, 0))
    a.release(0)
    assert a.commit_offsets() == {(CLICKS, 0): 41, (GOALS, 0): 9}


def test_over_limit_names_topic_partitions_that_ran_ahead() -> None:
    a = aligner(max_buffered=3)
    feed(a, (SENDS, 0), 1, 2, 3)
    feed(a, (GOALS, 0), 1, 2)
    assert a.release(0) == []  # waiting for clicks
    assert a.over_limit() == {(SENDS, 0)}
    assert (a.buffered((SENDS, 0)), a.buffered((GOALS, 0)), a.buffered((CLICKS, 0))) == (3, 2, 0)


def test_revoke_forgets_only_the_revoked_topic_partitions() -> None:
    a = aligner(partitions=2)
    feed(a, (GOALS, 0), 5)
    feed(a, (GOALS, 1), 6)
    a.end_reached((SENDS, 0))
    a.end_reached((SENDS, 1))
    a.revoke([(GOALS, 0), (SENDS, 0)])
    assert a.commit_offsets() == {(GOALS, 1): 0}  # its goal is still buffered
    assert (a.buffered((GOALS, 0)), a.buffered((GOALS, 1))) == (0, 1)
    assert a.at_end == {(SENDS, 1)}


def test_after_max_idle_ms_a_topic_that_runs_dry_also_bounds_the_release() -> None:
    a = aligner()
    a.end_reached((SENDS, 0))
    a.end_reached((GOALS, 0))
    [c] = feed(a, (CLICKS, 0), 100)
    assert a.release(0) == [c]  # the clicks run dry: quiet from now on, having said 100
    [s10] = feed(a, (SENDS, 0), 10)
    g20, _ = feed(a, (GOALS, 0), 20, 105)
    assert a.release(0) == []  # waiting for clicks
    # Once s10 is out the sends are quiet too: the next send may be at 11, so releasing the goal at
    # 105 before it would put it 94 ms (> grace) ahead of a send still to come.
    assert a.release(IDLE_MS) == [s10, g20]
