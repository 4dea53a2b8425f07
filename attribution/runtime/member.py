"""What every runtime's group member shares: the engine, the aligner, the batch cycle after the
consumer's own work, settings, tallies, health. The runtimes (``worker``: confluent-kafka;
``faust``: faust-streaming) only consume, hand records over, and commit what this returns.

A cycle: records go in (``take``), the aligner releases what may be processed, the processor writes
its state to Redis, the outputs are published and made durable, then ``commit`` receives, per
topic-partition, the first offset not processed. Nothing is committed before its state and outputs
are durable, so a crash anywhere re-delivers the batch, which the per-user fences make a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from attribution import __version__, compiled
from attribution.contract.topics import INPUTS
from attribution.core.model import Located
from attribution.core.outputs import DeadLetter
from attribution.core.rules import ProjectSettings, SettingsBook
from attribution.engine.processor import BatchResult, EngineConfig, Processor, Record
from attribution.errors import BadSettings
from attribution.infra.config import Config
from attribution.infra.http import OpsServer
from attribution.infra.metrics import Metrics
from attribution.runtime.align import Aligner, Tp
from attribution.runtime.outputs import Outputs
from attribution.runtime.settings_sync import SettingsFeed
from attribution.runtime.tally_publisher import TallyPublisher
from attribution.runtime.telemetry import GcPacer, record_batch, record_cache
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

log = logging.getLogger(__name__)

Commit = Callable[[dict[Tp, int]], None]


class Member:
    """The runtime-neutral part of one consumer group member."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
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
            config.cache_mb << 20,
        )
        self.processor = Processor(self.store, self.keys, self.book, engine)
        self.tallies = TallyPublisher(config, self.keys, self.book, self.metrics)
        self.kinds = {config.topic(kind): kind for kind in INPUTS}
        self.aligner = Aligner(config.max_idle_ms, config.max_buffered, config.grace_ms)
        self.assigned: set[Tp] = set()
        self.committed: dict[Tp, int] = {}
        self.started = False  # settings loaded, subscribed: the loop runs
        self.joined = False  # an assignment is in force (False from a revocation to the next one)
        self.redis_failing = False  # the last batch failed on Redis: it is retried with backoff
        self.generation: str | None = None
        self.identity_pending = False
        self.settings_kept = False
        self.batches = 0
        self._last_loop = time.monotonic()
        self._cache_counted = [0, 0, 0]
        self.gc = GcPacer()

    # -- the cycle -----------------------------------------------------------------------------------

    def take(self, record: Record, result: BatchResult) -> None:
        """Decode one consumed record into the aligner (a dead letter goes into ``result``)."""
        self.aligner.add(
            (record.topic, record.partition), record.offset, self.processor.decode(record, result)
        )

    def settings_step(self, settings: SettingsFeed) -> list[DeadLetter]:
        """Take in new settings; returns the refused settings records this member dead-letters now
        (one member does it: the holder of partition 0 of the first input)."""
        if not self.settings_kept:  # in this generation (a rebuild starts a new one)
            settings.keep_all()
            self.settings_kept = True
        settings.poll(0)
        if settings.pending:  # kept until taken in, even across a Redis error
            self.settings_changed(settings.pending)
            settings.keep(settings.pending)
            settings.pending = []
        owner = (self.config.topic(INPUTS[0]), 0) in self.assigned
        return settings.dead_letters_due() if owner else []

    def run_released(
        self,
        result: BatchResult,
        outputs: Outputs,
        commit: Commit,
        started: float,
        parsed: float,
        released: list[Located] | None = None,
    ) -> bool:
        """Process what the aligner releases (or ``released``, a batch retried after a Redis error),
        publish, then ``commit`` the offsets that moved. Returns whether a batch was committed."""
        if released is None:
            released = self.aligner.release(time.monotonic() * 1000)
        if released:
            self.processor.apply(released, result)
            self.tallies.poke()  # the counters and their dirty marks are in Redis: publish them
            # records for the identity topic: the inputs are not at their end before they are read
            self.identity_pending = bool(result.identity)
        processed = time.perf_counter()
        offsets = {tp: o for tp, o in self.aligner.commit_offsets().items() if self.committed.get(tp) != o}
        if not offsets and not result.dead_letters:
            return False
        outputs.begin()
        outputs.send_batch(result)
        produced = time.perf_counter()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch: %d released, committing %s", len(released), sorted(offsets.items()))
        commit(offsets)
        self.committed.update(offsets)
        committed = time.perf_counter()
        self.batches += 1
        record_batch(self.metrics, result, len(released), started, parsed, processed, produced, committed)
        record_cache(self.metrics, self.processor.cache, self._cache_counted)
        self.gc.settle()
        return True

    def log_start(self) -> None:
        log.info(
            "state generation %s; attribution %s, %s runtime, %s build",
            self.generation,
            __version__,
            self.config.runtime,
            compiled.BUILD,
        )

    # -- assignment ----------------------------------------------------------------------------------

    def assign(self, tps: Iterable[Tp]) -> None:
        tps = set(tps)
        self.assigned |= tps
        self.joined = True
        self.aligner.assign(tps)
        self.metrics.rebalances.labels("assign").inc()
        self.metrics.assigned.set(len(self.assigned))
        log.info("assigned %s", sorted(self.assigned))

    def revoke(self, tps: Iterable[Tp]) -> None:
        """Forget revoked partitions: what the aligner buffered was never processed nor committed, so
        the next owner reads it."""
        tps = set(tps)
        self.assigned -= tps
        self.joined = False
        self.aligner.revoke(tps)
        self.processor.ledger.forget(sorted({p for _, p in tps}))
        for topic, partition in tps:
            self.committed.pop((topic, partition), None)
            with contextlib.suppress(KeyError):  # another member reports its lag now
                self.metrics.lag.remove(topic, str(partition))
        self.metrics.rebalances.labels("revoke").inc()
        self.metrics.assigned.set(len(self.assigned))

    # -- settings, health ----------------------------------------------------------------------------

    def settings_changed(self, changed: list[ProjectSettings]) -> None:
        """New settings may change a campaign's primary basis and rate: republish the project's tallies."""
        now_ms = int(time.time() * 1000)
        for s in changed:
            marked = self.store.touch_project(self.keys.project_campaigns(s.project_id), now_ms)
            log.info("settings v%d of %s in force; %d tallies to republish", s.version, s.project_id, marked)
        self.export_settings()

    def export_settings(self) -> None:
        for project in self.book.projects():
            s = self.book.get(project)
            if s is not None:
                self.metrics.settings_version.labels(project).set(s.version)

    def serve(self) -> OpsServer | None:
        cfg = self.config
        if not cfg.metrics_port:
            return None
        try:
            server = OpsServer(
                cfg.metrics_host, cfg.metrics_port, self.metrics.registry, self.healthy, self.ready
            )
        except OSError as exc:
            raise BadSettings(
                "ATTRIBUTION_METRICS_PORT",
                f"cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror}); "
                "pick a free port, or 0 to serve no metrics",
            ) from None
        return server.start()

    def loop_alive(self) -> None:
        self._last_loop = time.monotonic()
        self.metrics.ready.set(self.ready()[0])

    def healthy(self) -> tuple[bool, dict[str, object]]:
        stalled_s = time.monotonic() - self._last_loop
        tallies = self.tallies.alive()
        healthy = stalled_s < max(30.0, 3 * self.config.session_timeout_ms / 1000) and tallies
        return healthy, {"loop_age_s": round(stalled_s, 3), "tallies_alive": tallies}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Ready means consuming: settings loaded, state generation checked, and the group joined
        (an assignment received, which may be empty when there are more workers than partitions)."""
        ready = self.started and self.joined and self.generation is not None and not self.redis_failing
        return ready, {"joined": self.joined, "assigned_partitions": len(self.assigned)}
