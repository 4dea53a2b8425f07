"""The confluent-kafka batch worker: consume -> process -> produce -> flush -> commit.

Offsets are committed only after the batch's state is in Redis and its outputs are acknowledged by
the broker, so a crash at any point re-delivers the batch; the per-user (topic, partition, offset)
fence makes that a no-op for state and republishes the affected outputs under their stable ids. A
batch torn inside its state write is finished by whoever reads the partition next
(``attribution.state.ledger``). Before and during the run the worker checks that Redis still holds
its state generation (``attribution.state.generation``) and stops with LostState if not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from redis.backoff import ExponentialWithJitterBackoff

from attribution.core.outputs import DeadLetter
from attribution.engine.processor import BatchResult, Record
from attribution.errors import AttributionError, BadSettings, Unavailable
from attribution.infra.config import Config
from attribution.infra.metrics import Metrics
from attribution.runtime import kafka_io
from attribution.runtime.member import Member
from attribution.runtime.outputs import Outputs
from attribution.runtime.settings_sync import SettingsFeed
from attribution.runtime.telemetry import export_lag, tune_gc
from attribution.state import generation

log = logging.getLogger(__name__)
LAG_EVERY_S = 5.0
# after the n-th Redis error in a row: a wait drawn between 0 and min(30, 0.5 * 2**n) s (full jitter)
REDIS_BACKOFF = ExponentialWithJitterBackoff(cap=30.0, base=0.5)


class Worker(Member):
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
        super().__init__(config, metrics)
        self.start_offsets = start_offsets
        self.until_end = until_end
        self.exclusive_start = exclusive_start
        self.refused: AttributionError | None = None
        self.input_partitions = 0
        self._stop = threading.Event()
        self.paused: set[tuple[str, int]] = set()

    def stop(self) -> None:
        self._stop.set()

    # -- main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.config
        server = self.serve()  # before the broker and Redis checks: a port in use is refused at once
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
        self.export_settings()
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
            self.log_start()
        consumer.subscribe(
            list(self.kinds), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        tune_gc()
        self.started = True
        next_lag = time.monotonic() + LAG_EVERY_S
        next_check = time.monotonic() + cfg.state_check_ms / 1000
        failures = 0
        try:
            while not self._stop.is_set():
                messages = consumer.consume(cfg.batch_size, cfg.poll_timeout_ms / 1000)
                self.loop_alive()
                if self.refused is not None:
                    break
                if self.generation is None:  # exclusive start: nothing to do before it
                    continue
                if not self.tallies.started:  # once the generation is in force (a rebuild wipes first)
                    self.tallies.start()
                try:
                    dead = self.settings_step(settings)
                    self._handle(messages, consumer, outputs, dead)
                    settings.dead_lettered(dead)
                    self.tallies.check()
                    now = time.monotonic()
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
            self.tallies.stop(final=True)  # what the last batches marked dirty
        finally:
            self.tallies.stop(final=False)
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
            record = Record(self.kinds[topic], topic, partition, m.offset() or 0, m.key(), m.value())
            self.take(record, result)
        parsed = time.perf_counter()
        self.run_released(result, outputs, lambda offsets: outputs.commit(consumer, offsets), started, parsed)
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
        self.assign(tps)
        # librdkafka remembers a pause across revoke/assign; our backpressure starts afresh
        consumer.resume(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed and committed synchronously inside the poll loop, so nothing is in
        # flight here: the next owner starts exactly after our last commit.
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self.revoke(tps)
        self.paused -= tps


def _unavailable(exc: redis.RedisError) -> Unavailable:
    return Unavailable(f"Redis at REDIS_URL failed at start ({type(exc).__name__}: {exc})")
