"""The attribution agents on a faust-streaming App: one agent over the co-partitioned inputs, a timer.

The agent takes batches with ``Stream.noack_take`` and hands them to the same cycle as the confluent
worker (``attribution.runtime.member``), run on one thread beside the event loop so the loop keeps
heartbeats, fetches and the user's own agents going while Redis answers. What Faust does not give,
and how it is kept here:

- **Event-time alignment.** One agent reads every input topic, so partition p of all of them meets
  in one aligner (the confluent worker's), which releases per partition in event-time order. Faust
  has no end-of-partition event: a topic-partition is at its end when the next offset to read
  reaches the high watermark of the last fetch (as librdkafka decides).
- **Commit only what was processed.** ``take()`` acks its whole buffer after the body, and Faust then
  commits on a timer, independent of our Redis writes and output flushes: events the aligner still
  holds would be committed. The input topics are declared without acks (Faust never commits them)
  and the cycle commits the aligner's first unprocessed offsets itself, after state and outputs are
  durable (``bridge.commit``). That also sidesteps Faust's offset-gap tracking, which misses a gap
  after offset 0 or at the first record after an assignment and then stops committing.
- **Rebalances.** A revocation waits for the batch in flight (Faust only waits for acked streams)
  and then forgets what the aligner held; records fetched under an older group generation are
  dropped.
- **Shutdown.** The batch in flight finishes, tallies are published, then the app stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
from faust.types import TP
from redis.backoff import ExponentialWithJitterBackoff

from attribution.contract.topics import INPUTS
from attribution.engine.processor import BatchResult, Record
from attribution.errors import BadSettings, Unavailable
from attribution.infra.config import Config
from attribution.infra.http import OpsServer
from attribution.infra.metrics import Metrics
from attribution.runtime import kafka_io
from attribution.runtime.align import Tp
from attribution.runtime.faust import bridge
from attribution.runtime.member import Member
from attribution.runtime.outputs import Outputs
from attribution.runtime.settings_sync import SettingsFeed
from attribution.state import generation

log = logging.getLogger(__name__)
TICK_S = 0.05  # a cycle without records this often: aligner idle releases, lag, state checks
LAG_EVERY_S = 5.0
REDIS_BACKOFF = ExponentialWithJitterBackoff(cap=30.0, base=0.5)
T = TypeVar("T")


class AttributionAgents(Member):
    """Mount with ``mount(app)`` before the app starts; ``failure`` holds what stopped it, if anything."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        if config.exactly_once:
            raise BadSettings(
                "ATTRIBUTION_EXACTLY_ONCE",
                "the faust runtime publishes at least once (fenced state, stable output ids); "
                "use the confluent runtime for Kafka transactions",
            )
        super().__init__(config, metrics or Metrics(runtime="faust"))
        self.app: Any = None
        self.failure: BaseException | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="attribution")
        self._lock = asyncio.Lock()
        self._begun = asyncio.Event()
        self._inbox: list[tuple[int, Record]] = []  # (group generation, record) from the agent
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping = False
        self._settings: SettingsFeed | None = None
        self._outputs: Outputs | None = None
        self._server: OpsServer | None = None
        self._carry = BatchResult()  # decoded since the last good cycle (dead letters, outcomes)
        self._retry: list[Any] | None = None  # released events of a cycle Redis failed
        self._retry_at = 0.0  # no cycle before (monotonic s): the backoff after a Redis error
        self._paused: set[Tp] = set()
        self._failures = 0
        self._next_lag = self._next_check = 0.0

    # -- mounting ------------------------------------------------------------------------------------

    def mount(self, app: Any) -> None:
        """Add the agent, the timer and the rebalance and shutdown hooks to ``app`` (a faust.App)."""
        self.app = app
        bridge.install(app, fetch_wait_ms(self.config))
        names = [self.config.topic(kind) for kind in INPUTS]
        topic = app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw", acks=False)
        app.agent(topic, name="attribution.inputs")(self._agent)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)
        app.task(self._begin)

    async def _begin(self, *_: Any) -> None:
        try:
            await self._call(self._start)
        except BaseException as exc:
            if not self._stopping:  # else: stopped before it started (the executor is shut down)
                await self._fail(exc)
            return
        self._begun.set()
        try:
            await self._cycles()
        except Exception as exc:
            await self._fail(exc)

    async def _cycles(self) -> None:
        # Cycles run here, apart from the agent: while one is on the engine's thread, Faust keeps
        # delivering into the inbox, and the next cycle takes all of it (as the confluent worker's
        # consume takes what librdkafka prefetched). Without records, a cycle every TICK_S: idle
        # releases, lag, state checks (tallies go out on their own thread: TallyPublisher).
        while not (self._stopping or self.failure is not None or self.app.should_stop):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), TICK_S)
            self._arrived.clear()
            inbox, self._inbox = self._inbox, []
            self._drained.set()
            current = self.app.consumer_generation_id
            await self._run([r for generation_id, r in inbox if generation_id == current])

    def _start(self) -> None:
        """Blocking start: the metrics server, input topics, settings, state generation."""
        cfg = self.config
        self._server = self.serve()
        kafka_io.check_copartitioned(cfg)
        self._settings = SettingsFeed(cfg, self.book, self.store)
        try:
            self._settings.load_all()
            self.export_settings()
            self.generation = generation.establish(self.store, self._has_committed)
        except redis.RedisError as exc:
            raise Unavailable(f"Redis at REDIS_URL failed at start ({type(exc).__name__}: {exc})") from None
        self.log_start()
        self._outputs = Outputs(cfg, lambda: self._stopping)
        self.tallies.start()
        self.started = True

    def _has_committed(self) -> bool:
        cfg = self.config
        probe = kafka_io.consumer(cfg, {"group.id": cfg.group_id, "enable.auto.commit": False})
        try:
            return kafka_io.has_committed(probe, cfg, kafka_io.check_copartitioned(cfg))
        finally:
            probe.close()

    # -- the agent, the timer ------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        """Batches of records into the inbox; waits while it holds ATTRIBUTION_MAX_BUFFERED records
        (Faust's flow stops behind it). Records of an older group generation are dropped."""
        await self._begun.wait()
        within = self.config.poll_timeout_ms / 1000
        kinds = self.kinds
        async for events in stream.noack_take(self.config.batch_size, within=within):
            current = self.app.consumer_generation_id
            self._inbox += [
                (current, Record(kinds[m.topic], m.topic, m.partition, m.offset, m.key, m.value))
                for m in (e.message for e in events)
                if m.generation_id == current
            ]
            self._arrived.set()
            while len(self._inbox) >= self.config.max_buffered and not self._stopping:
                self._drained.clear()
                await self._drained.wait()

    async def _run(self, records: list[Record]) -> None:
        async with self._lock:
            if self._stopping or self.failure is not None:  # the shutdown may have taken the lock first
                return
            try:
                over = await self._call(lambda: self._cycle(records))
            except BaseException as exc:
                await self._fail(exc)
                return
            self._backpressure(over)

    def _backpressure(self, over: set[Tp]) -> None:
        """Pause topic-partitions that ran far ahead of their partners; resume them once drained."""
        consumer = self.app.consumer
        # re-asserted each cycle: Faust's own flow control resumes a partition when its buffer drains
        to_pause = over
        half = self.config.max_buffered // 2
        to_resume = {tp for tp in self._paused - over if self.aligner.buffered(tp) < half}
        if to_pause:
            consumer.pause_partitions({driver_tp(tp) for tp in to_pause})
            self._paused |= to_pause
        if to_resume:
            consumer.resume_partitions({driver_tp(tp) for tp in to_resume})
            self._paused -= to_resume

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            log.error("attribution agents stopped: %s", exc)
            await self.app.crash(exc)

    # -- one cycle, on the agents' thread ------------------------------------------------------------

    def _cycle(self, records: list[Record]) -> set[Tp]:
        """Take ``records`` in, process what the aligner releases, commit; returns the topic-partitions
        to pause (far ahead of their partners)."""
        started = time.perf_counter()
        self.loop_alive()
        owned = self.assigned
        for record in records:
            if (record.topic, record.partition) in owned:
                self.take(record, self._carry)
        self._at_ends()
        parsed = time.perf_counter()
        now = time.monotonic()
        if now < self._retry_at:
            return self.aligner.over_limit()
        assert self._settings is not None and self._outputs is not None
        try:
            dead = self.settings_step(self._settings)
            result = _copy(self._carry)
            result.dead_letters += dead
            result.outcomes.update((d.topic, "dlq") for d in dead)
            if self._retry is None:
                self._retry = self.aligner.release(now * 1000)
            self.run_released(result, self._outputs, self._commit, started, parsed, self._retry)
            self._retry, self._carry, self._retry_at = None, BatchResult(), 0.0
            self._settings.dead_lettered(dead)
            self._cadence(now)
            self._failures = 0
            self.redis_failing = False
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            raise BadSettings("REDIS_URL", f"Redis refused the worker: {exc}") from None
        except redis.RedisError as exc:
            self._redis_failed(exc)
        return self.aligner.over_limit()

    def _cadence(self, now: float) -> None:
        cfg = self.config
        self.tallies.check()
        if now >= self._next_check:
            generation.verify(self.store, self.generation)
            self._next_check = now + cfg.state_check_ms / 1000
        if now >= self._next_lag:
            self._export_lag()
            self._next_lag = now + LAG_EVERY_S

    def _redis_failed(self, exc: redis.RedisError) -> None:
        """Redis failed inside a cycle: nothing of it was committed. The released events are kept and
        applied again after a backoff, in the same order: what the first try wrote is fenced, a torn
        state write is finished by the next load (the partitions' ledgers are forgotten)."""
        assert self._outputs is not None
        self._failures += 1
        self.redis_failing = True
        wait_s = REDIS_BACKOFF.compute(self._failures)
        self.metrics.redis_errors.labels(type(exc).__name__).inc()
        log.warning("Redis error (%s: %s); retrying the batch in %.1f s", type(exc).__name__, exc, wait_s)
        self._outputs.abort()
        self.processor.ledger.forget(sorted({p for _, p in self.assigned}))
        self._retry_at = time.monotonic() + wait_s

    def _commit(self, offsets: dict[Tp, int]) -> None:
        """Outputs durable first, then the offsets (on the thread where Faust's consumer lives)."""
        assert self._outputs is not None
        self._outputs.flush()
        if offsets:
            bridge.commit(self.app, offsets)

    def _at_ends(self) -> None:
        """Faust has no end-of-partition event. A topic-partition with nothing buffered is at its end
        when the consumer's last fetch stood at the high watermark (its position is past transaction
        markers and aborted records, which are never handed on) and every record it handed on has
        reached the aligner (none still in Faust's queues or the inbox)."""
        marks = bridge.fetched(self.app)
        for tp in self.assigned:
            if self.aligner.buffered(tp) or tp in self.aligner.at_end:
                continue
            mark = marks.get(tp)
            if mark is None or mark.position < mark.end:
                continue
            seen = self.aligner.next_offset.get(tp)  # one past the last record taken in
            if mark.last is None or (seen is not None and seen > mark.last):
                self.aligner.end_reached(tp)

    def _export_lag(self) -> None:
        marks = bridge.fetched(self.app)
        for tp in sorted(self.assigned):
            mark = marks.get(tp)
            if mark is not None:
                at = self.aligner.next_offset.get(tp, mark.position)
                self.metrics.lag.labels(tp[0], str(tp[1])).set(max(0, mark.end - at))

    # -- rebalances and shutdown (event loop) --------------------------------------------------------

    async def _on_assigned(self, app: Any, assigned: Iterable[Any], **_: Any) -> None:
        tps = {(tp.topic, tp.partition) for tp in assigned if tp.topic in self.kinds}
        async with self._lock:
            self.assign(tps)

    async def _on_revoked(self, app: Any, revoked: Iterable[Any], **_: Any) -> None:
        """Called before the group rejoins: the batch in flight (under the lock) is finished and
        committed first, then what the aligner held for these partitions is forgotten."""
        tps = {(tp.topic, tp.partition) for tp in revoked if tp.topic in self.kinds}
        async with self._lock:
            self.revoke(tps)
            # released, decoded or in the inbox but not committed: the next owner reads them again
            self._retry, self._carry, self._retry_at = None, BatchResult(), 0.0
            self._inbox = [(g, r) for g, r in self._inbox if (r.topic, r.partition) not in tps]
            self._drained.set()
            self._paused -= tps
            marks = bridge.fetched(self.app)
            for tp in tps:  # the next assignment starts from the committed offsets
                marks.pop(tp, None)

    async def _on_shutdown(self, app: Any, **_: Any) -> None:
        self._stopping = True
        self._drained.set()
        async with self._lock:
            try:
                await self._call(self._stop)
            finally:
                self._thread.shutdown(wait=True)
                if self._server is not None:
                    self._server.stop()

    def _stop(self) -> None:
        self.started = False
        self.metrics.ready.set(0)
        outputs, settings = self._outputs, self._settings
        self.tallies.stop(final=self.failure is None)  # what the last batches marked dirty
        if outputs is not None:
            outputs.abort()
            outputs.producer.flush(10)
        if settings is not None:
            settings.close()
        self.store.close()
        log.info("attribution agents stopped after %d batches", self.batches)


def driver_tp(tp: Tp) -> TP:
    return TP(*tp)


def fetch_wait_ms(config: Config) -> int:
    """KAFKA_FETCH_WAIT_MAX_MS, as for the confluent worker's consumer."""
    value = config.kafka(defaults=kafka_io.CONSUMER_DEFAULTS)["fetch.wait.max.ms"]
    try:
        return int(value)
    except ValueError:
        raise BadSettings("KAFKA_FETCH_WAIT_MAX_MS", f"not a number of milliseconds: {value!r}") from None


def _copy(result: BatchResult) -> BatchResult:
    copy = BatchResult(dead_letters=list(result.dead_letters))
    copy.outcomes.update(result.outcomes)
    return copy
