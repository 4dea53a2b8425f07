"""The confluent-kafka batch worker: consume -> process -> produce -> flush -> commit.

Offsets are committed only after the batch's state is in Redis and its outputs are acknowledged by
the broker, so a crash at any point re-delivers the batch; the per-user (topic, partition, offset)
fence makes that a no-op for state and republishes the affected outputs under their stable ids. A
batch torn inside its state write is finished by whoever reads the partition next
(``attribution.state.ledger``). Before and during the run the worker checks that Redis still holds
its state generation (``attribution.state.generation``) and stops with LostState if not.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from redis.backoff import ExponentialWithJitterBackoff

from attribution.contract.topics import INPUTS
from attribution.core.outputs import DeadLetter
from attribution.core.rules import ProjectSettings, SettingsBook
from attribution.engine.processor import BatchResult, EngineConfig, Processor, Record
from attribution.engine.tally_feed import TallyFeed
from attribution.errors import AttributionError, BadSettings, Unavailable
from attribution.infra.config import Config
from attribution.infra.http import OpsServer
from attribution.infra.metrics import Metrics
from attribution.runtime import kafka_io
from attribution.runtime.align import Aligner
from attribution.runtime.outputs import Outputs
from attribution.runtime.settings_sync import SettingsFeed
from attribution.runtime.telemetry import export_lag, record_batch, tune_gc
from attribution.state import generation
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

log = logging.getLogger(__name__)
LAG_EVERY_S = 5.0
# after the n-th Redis error in a row: a wait drawn between 0 and min(30, 0.5 * 2**n) s (full jitter)
REDIS_BACKOFF = ExponentialWithJitterBackoff(cap=30.0, base=0.5)


class Worker:
    """One member of the consumer group. ``run`` blocks until ``stop`` is called (from a signal handler
    or another thread), then finishes the batch in hand, publishes tallies, commits and leaves."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        start_offsets: dict[tuple[str, int], int] | None = None,
        until_end: bool = False,
        exclusive_start: Callable[[], str] | None = None,
    ) -> None:
        """For ``attribution rebuild``: ``start_offsets`` overrides the committed offsets on
        assignment; ``until_end`` stops the worker once it owns every input partition and has
        processed each to its end; ``exclusive_start`` is called (and returns the new generation)
        only once the first assignment gives this worker every input partition, else it stops."""
        self.config = config
        self.start_offsets = start_offsets
        self.until_end = until_end
        self.exclusive_start = exclusive_start
        self.refused: AttributionError | None = None
        self.input_partitions = 0
        self.metrics = metrics or Metrics()
        self.keys = Keys(config.redis_prefix)
        self.book = SettingsBook()
        self.store = RedisStore.from_url(config.redis_url.get_secret_value(), self.keys, config.tally_ttl_ms)
        engine = EngineConfig(
            config.grace_ms,
            config.state_margin_ms,
            config.max_event_bytes,
            config.identities,
            config.identity_window_ms,
        )
        self.processor = Processor(self.store, self.keys, self.book, engine)
        self.tally_feed = TallyFeed(self.store, self.keys, self.book)
        self.kinds = {config.topic(kind): kind for kind in INPUTS}
        self.assigned: set[tuple[str, int]] = set()
        self.started = False  # settings loaded, subscribed: the loop runs
        self.joined = False  # an assignment is in force (False from a revocation to the next one)
        self.redis_failing = False  # the last batch failed on Redis: it is retried with backoff
        self.batches = 0
        self._stop = threading.Event()
        self._last_loop = time.monotonic()
        self.generation: str | None = None
        self.aligner = Aligner(config.max_idle_ms, config.max_buffered, config.grace_ms)
        self.paused: set[tuple[str, int]] = set()
        self.committed: dict[tuple[str, int], int] = {}
        self.identity_pending = False

    def stop(self) -> None:
        self._stop.set()

    # -- main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.config
        server = self._serve()  # before the broker and Redis checks: a port in use is refused at once
        try:
            self._run(cfg)
        finally:
            if server is not None:
                server.stop()

    def _run(self, cfg: Config) -> None:
        partitions = self.input_partitions = kafka_io.check_copartitioned(cfg)
        settings = SettingsFeed(cfg, self.book, self.store)
        try:
            settings.load_all()
        except redis.RedisError as exc:
            settings.close()
            raise _unavailable(exc) from None
        self._export_settings()
        outputs = Outputs(cfg, self._stop.is_set)
        consumer = kafka_io.consumer(
            cfg,
            {
                "group.id": cfg.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": cfg.session_timeout_ms,
                # the aligner must know when a topic-partition has nothing more to give
                "enable.partition.eof": True,
                # range keeps partition p of every input topic on one member: co-partitioned work
                "partition.assignment.strategy": "range",
            },
        )
        if self.exclusive_start is None:
            try:
                self.generation = generation.establish(
                    self.store, lambda: kafka_io.has_committed(consumer, cfg, partitions)
                )
            except redis.RedisError as exc:
                consumer.close()
                settings.close()
                raise Unavailable(
                    f"Redis at REDIS_URL failed at start ({type(exc).__name__}: {exc})"
                ) from None
            log.info("state generation %s", self.generation)
        consumer.subscribe(
            list(self.kinds), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        tune_gc()
        self.started = True
        next_tally = time.monotonic()
        next_lag = time.monotonic() + LAG_EVERY_S
        next_check = time.monotonic() + cfg.state_check_ms / 1000
        failures = 0
        settings_kept = False
        try:
            while not self._stop.is_set():
                messages = consumer.consume(cfg.batch_size, cfg.poll_timeout_ms / 1000)
                self._last_loop = time.monotonic()
                self.metrics.ready.set(self._ready()[0])
                if self.refused is not None:
                    break
                if self.generation is None:  # exclusive start: nothing to do before it
                    continue
                try:
                    if not settings_kept:  # in this generation (a rebuild starts a new one)
                        settings.keep_all()
                        settings_kept = True
                    settings.poll(0)
                    if settings.pending:  # kept until taken in, even across a Redis error
                        self._settings_changed(settings.pending)
                        settings.keep(settings.pending)
                        settings.pending = []
                    # refused settings records: dead-lettered by one worker, the holder of partition 0
                    owner = (cfg.topic(INPUTS[0]), 0) in self.assigned
                    dead = settings.dead_letters_due() if owner else []
                    self._handle(messages, consumer, outputs, dead)
                    settings.dead_lettered(dead)
                    now = time.monotonic()
                    if now >= next_tally:
                        self._publish_tallies(outputs)
                        next_tally = now + cfg.tally_interval_ms / 1000
                    if now >= next_check:
                        generation.verify(self.store, self.generation)
                        next_check = now + cfg.state_check_ms / 1000
                    failures = 0
                    self.redis_failing = False
                except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
                    raise BadSettings("REDIS_URL", f"Redis refused the worker: {exc}") from None
                except redis.RedisError as exc:
                    failures += 1
                    self.redis_failing = True
                    self._redis_failed(exc, consumer, outputs, REDIS_BACKOFF.compute(failures))
                    continue
                if now >= next_lag:
                    export_lag(self.metrics, consumer, self.assigned)
                    next_lag = now + LAG_EVERY_S
                if self.until_end and self._at_end():
                    log.info("every input partition processed to its end")
                    break
            if self.refused is not None:
                raise self.refused
            try:
                self._publish_tallies(outputs)
            except redis.RedisError as exc:  # the dirty marks stay: the next publisher sends them
                log.warning("tallies not published at stop (Redis: %s)", exc)
        finally:
            self.started = False
            self.metrics.ready.set(0)
            outputs.abort()
            outputs.producer.flush(10)
            consumer.close()
            settings.close()
            self.store.close()
            log.info("worker stopped after %d batches", self.batches)

    def _redis_failed(
        self, exc: redis.RedisError, consumer: Consumer, outputs: Outputs, wait_s: float
    ) -> None:
        """Redis failed inside a batch (connection, timeout, OOM, READONLY...). Nothing of the batch
        was committed: forget what is buffered, go back to the last committed offsets and read
        again after ``wait_s`` (a torn state write is recovered by the next load, as after a crash)."""
        self.metrics.redis_errors.labels(type(exc).__name__).inc()
        log.warning(
            "Redis error (%s: %s); re-reading from the last commit in %.1f s", type(exc).__name__, exc, wait_s
        )
        outputs.abort()
        tps = sorted(self.assigned)
        self.aligner.revoke(set(tps))
        self.aligner.assign(set(tps))
        self.processor.ledger.forget(sorted({p for _, p in tps}))
        try:
            given = self.start_offsets or {}
            for tp in kafka_io.restart_points(consumer, tps, {**given, **self.committed}):
                consumer.seek(tp)
        except KafkaException as failed:
            raise AttributionError(
                f"cannot go back to the last commit after a Redis error: {failed}"
            ) from None
        if self.paused:
            consumer.resume([TopicPartition(t, p) for t, p in self.paused])
            self.paused.clear()
        self._stop.wait(wait_s)

    def _handle(
        self, messages: list[Message], consumer: Consumer, outputs: Outputs, dead: list[DeadLetter]
    ) -> None:
        """Decode what arrived, process what the aligner releases, publish (with ``dead``, refused
        settings records), then commit."""
        started = time.perf_counter()
        result = BatchResult(dead_letters=list(dead))
        result.outcomes.update((d.topic, "dlq") for d in dead)
        for m in messages:
            err = m.error()
            topic, partition = m.topic() or "", m.partition() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.aligner.end_reached((topic, partition))
                elif err.fatal():
                    raise AttributionError(f"fatal consumer error: {err.str()}")
                else:
                    log.warning("consumer error: %s", err.str())
                continue
            offset = m.offset() or 0
            record = Record(self.kinds[topic], topic, partition, offset, m.key(), m.value())
            self.aligner.add((topic, partition), offset, self.processor.decode(record, result))
        parsed = time.perf_counter()
        released = self.aligner.release(time.monotonic() * 1000)
        if released:
            self.processor.apply(released, result)
            # records for the identity topic: the inputs are not at their end before they are read
            self.identity_pending = bool(result.identity)
        processed = time.perf_counter()
        offsets = {tp: o for tp, o in self.aligner.commit_offsets().items() if self.committed.get(tp) != o}
        if not offsets and not result.dead_letters:
            self._backpressure(consumer)
            return
        outputs.begin()
        outputs.send_batch(result)
        produced = time.perf_counter()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch: %d released, committing %s", len(released), sorted(offsets.items()))
        outputs.commit(consumer, offsets)
        self.committed.update(offsets)
        committed = time.perf_counter()
        self.batches += 1
        record_batch(self.metrics, result, len(released), started, parsed, processed, produced, committed)
        self._backpressure(consumer)

    def _backpressure(self, consumer: Consumer) -> None:
        """Pause topic-partitions that ran far ahead of their partners; resume them once drained."""
        over = self.aligner.over_limit()
        to_pause = over - self.paused
        to_resume = {
            tp for tp in self.paused - over if self.aligner.buffered(tp) < self.config.max_buffered // 2
        }
        if to_pause:
            consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            self.paused |= to_pause
        if to_resume:
            consumer.resume([TopicPartition(t, p) for t, p in to_resume])
            self.paused -= to_resume

    def _publish_tallies(self, outputs: Outputs) -> None:
        self.metrics.tallies.inc(outputs.publish_tallies(self.tally_feed))

    # -- callbacks and metrics -----------------------------------------------------------------------

    def _at_end(self) -> bool:
        owned = len(self.assigned) == len(self.kinds) * self.input_partitions
        return owned and not self.identity_pending and self.aligner.drained()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        if self.exclusive_start is not None and self.generation is None:
            if len(tps) != len(self.kinds) * self.input_partitions:
                self.refused = AttributionError(
                    f"other members of consumer group {self.config.group_id} hold input partitions "
                    f"(got {len(tps)} of {len(self.kinds) * self.input_partitions}): stop every worker first"
                )
                return
            self.generation = self.exclusive_start()
        if self.start_offsets is not None:
            for tp in partitions:
                tp.offset = self.start_offsets.get((tp.topic, tp.partition), tp.offset)
            consumer.assign(partitions)
        self.assigned |= tps
        self.joined = True
        self.aligner.assign(tps)
        # librdkafka remembers a pause across revoke/assign; our backpressure starts afresh
        consumer.resume(partitions)
        self.metrics.rebalances.labels("assign").inc()
        self.metrics.assigned.set(len(self.assigned))
        log.info("assigned %s", sorted(self.assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed and committed synchronously inside the poll loop, so nothing is in
        # flight here: the next owner starts exactly after our last commit.
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned -= tps
        self.joined = False
        self.aligner.revoke(tps)  # buffered, never processed nor committed: the next owner reads them
        self.processor.ledger.forget(sorted({p for _, p in tps}))
        self.paused -= tps
        for topic, partition in tps:
            self.committed.pop((topic, partition), None)
            with contextlib.suppress(KeyError):  # another member reports its lag now
                self.metrics.lag.remove(topic, str(partition))
        self.metrics.rebalances.labels("revoke").inc()
        self.metrics.assigned.set(len(self.assigned))

    def _settings_changed(self, changed: list[ProjectSettings]) -> None:
        """New settings may change a campaign's primary basis and rate: republish the project's tallies."""
        now_ms = int(time.time() * 1000)
        for s in changed:
            marked = self.store.touch_project(self.keys.project_campaigns(s.project_id), now_ms)
            log.info("settings v%d of %s in force; %d tallies to republish", s.version, s.project_id, marked)
        self._export_settings()

    def _export_settings(self) -> None:
        for project in self.book.projects():
            s = self.book.get(project)
            if s is not None:
                self.metrics.settings_version.labels(project).set(s.version)

    def _serve(self) -> OpsServer | None:
        cfg = self.config
        if not cfg.metrics_port:
            return None
        try:
            server = OpsServer(
                cfg.metrics_host, cfg.metrics_port, self.metrics.registry, self._healthy, self._ready
            )
        except OSError as exc:
            raise BadSettings(
                "ATTRIBUTION_METRICS_PORT",
                f"cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror}); "
                "pick a free port, or 0 to serve no metrics",
            ) from None
        return server.start()

    def _healthy(self) -> tuple[bool, dict[str, object]]:
        stalled_s = time.monotonic() - self._last_loop
        return stalled_s < max(30.0, 3 * self.config.session_timeout_ms / 1000), {
            "loop_age_s": round(stalled_s, 3)
        }

    def _ready(self) -> tuple[bool, dict[str, object]]:
        """Ready means consuming: settings loaded, state generation checked, and the group joined
        (an assignment received, which may be empty when there are more workers than partitions)."""
        ready = self.started and self.joined and self.generation is not None and not self.redis_failing
        return ready, {"joined": self.joined, "assigned_partitions": len(self.assigned)}


def _unavailable(exc: redis.RedisError) -> Unavailable:
    return Unavailable(f"Redis at REDIS_URL failed at start ({type(exc).__name__}: {exc})")
