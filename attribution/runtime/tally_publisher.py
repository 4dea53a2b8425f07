"""Tallies published off the processing thread: a thread of its own, its own producer and Redis
connections. A round starts as soon as a batch has changed counters (``poke``), at most once per
``ATTRIBUTION_TALLY_INTERVAL_MS``, and at least that often (marks another worker left, a settings
change).

The processing thread only raises dirty marks (with the counters, in Redis); this thread reads them
and publishes absolute, versioned snapshots (``attribution.engine.tally_feed``). So a publication
never waits behind a batch, and a batch never waits behind a publication. A snapshot is idempotent
(the newest version wins on the compacted topic), so tallies need no transaction even in
exactly-once mode: they go out on a plain producer.

A Redis or broker error is logged and retried with a backoff (the marks stay until acknowledged);
Redis refusing the worker's credentials, or anything unexpected, stops the thread, and the worker
stops with it (``check``).
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from redis.backoff import ExponentialWithJitterBackoff

from attribution.core.rules import SettingsBook
from attribution.engine.tally_feed import TallyFeed
from attribution.errors import AttributionError, BadSettings
from attribution.infra.config import Config
from attribution.infra.metrics import Metrics
from attribution.runtime.outputs import Outputs
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

log = logging.getLogger(__name__)
JOIN_S = 60.0
# after the n-th failed round in a row: wait up to min(30, 0.5 * 2**n) s (full jitter) before the next
BACKOFF = ExponentialWithJitterBackoff(cap=30.0, base=0.5)


class TallyPublisher:
    def __init__(self, config: Config, keys: Keys, book: SettingsBook, metrics: Metrics) -> None:
        self.config = config
        self.keys = keys
        self.book = book
        self.metrics = metrics
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._outputs: Outputs | None = None
        self._store: RedisStore | None = None
        self._feed: TallyFeed | None = None

    def start(self) -> None:
        cfg = self.config
        self._store = RedisStore.from_url(cfg.redis_url.get_secret_value(), self.keys, cfg.tally_ttl_ms)
        self._outputs = Outputs(cfg.model_copy(update={"exactly_once": False}), self._stop.is_set)
        self._feed = TallyFeed(self._store, self.keys, self.book)
        self._thread = threading.Thread(target=self._run, name="attribution-tallies", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """False once the thread died of an unexpected error (before ``stop``)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def check(self) -> None:
        """Raise what stopped the thread, on the processing thread: the worker stops with it."""
        failure = self.failure
        if isinstance(failure, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
            raise BadSettings("REDIS_URL", f"Redis refused the tally publisher: {failure}") from None
        if failure is not None:
            raise AttributionError(f"the tally publisher stopped: {failure!r}") from failure

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self, final: bool = True) -> None:
        """Stop the thread; with ``final``, publish what is still dirty first (the batches are done)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(JOIN_S)
            if self._thread.is_alive():  # stuck on a broker that is down: leave it its clients
                log.warning("the tally thread did not stop within %.0f s; its marks stay", JOIN_S)
                return
        outputs, store = self._outputs, self._store
        try:
            if final and outputs is not None and store is not None and self.failure is None:
                try:
                    self._publish()
                except (redis.RedisError, AttributionError) as exc:  # the marks stay for the next one
                    log.warning("tallies not published at stop (%s)", exc)
        finally:
            if outputs is not None:
                outputs.producer.flush(10)
            if store is not None:
                store.close()
            self._outputs, self._store, self._feed = None, None, None

    def _publish(self) -> None:
        assert self._outputs is not None and self._feed is not None
        started = time.perf_counter()
        published = self._outputs.publish_tallies(self._feed)
        if published:
            self.metrics.tally_seconds.observe(time.perf_counter() - started)
            self.metrics.tallies.inc(published)

    def poke(self) -> None:
        """A batch changed counters: publish now, unless the last round is younger than the interval
        (then when it turns that old)."""
        self._wake.set()

    def _next_round(self, interval_s: float, last: float) -> bool:
        """Wait for a poke (or the interval: marks left by another worker, a settings change), then
        until ``interval_s`` after the ``last`` round; False once stopped."""
        self._wake.wait(interval_s)
        self._wake.clear()
        return not self._stop.wait(max(0.0, last + interval_s - time.monotonic()))

    def _run(self) -> None:
        interval_s = self.config.tally_interval_ms / 1000
        last, failures = 0.0, 0
        while not self._stop.is_set() and self._next_round(interval_s, last):
            last = time.monotonic()
            try:
                self._publish()
                failures = 0
                continue
            except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
                self.failure = exc  # a setting to fix (REDIS_URL), not an outage to wait out
                return
            except redis.RedisError as exc:
                self.metrics.redis_errors.labels(type(exc).__name__).inc()
                problem = f"Redis: {exc}"
            except AttributionError as exc:  # a delivery error: the broker is down or refuses
                problem = str(exc)
            except BaseException as exc:
                log.exception("the tally publisher failed")
                self.failure = exc
                return
            failures += 1
            wait_s = max(interval_s, BACKOFF.compute(failures))
            log.warning("tallies not published (%s); retrying in %.1f s", problem, wait_s)
            if self._stop.wait(wait_s):
                return
