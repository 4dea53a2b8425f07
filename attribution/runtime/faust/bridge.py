"""Everything that reaches into faust-streaming and aiokafka below their public API, in one place.

The pinned faust-streaming (see pyproject) leaves four gaps that matter to an exact engine; this
module closes them:

- **Co-partitioning.** For an app without tables, Faust's aiokafka consumer uses aiokafka's
  round-robin assignor, which gives partition p of ``sends`` and of ``goals`` to different members.
  ``AttributionTransport`` puts Faust's own co-partitioning assignor back (it groups topics with the
  same partition count that the same members subscribe to).
- **Fetch wait.** The driver hard-codes ``fetch_max_wait_ms=1500``; a broker that holds an empty
  fetch that long (the embedded one does) adds it to the goal -> tally latency. Ours is
  ``KAFKA_FETCH_WAIT_MAX_MS`` (default 100 ms, as for the confluent worker).
- **Isolation.** Faust reads ``read_uncommitted`` unless it runs its own transactions; the engine
  reads ``read_committed``, as librdkafka does by default, so both runtimes see the same records.
- **Commits.** A commit refused because the group is rebalancing crashes Faust's consumer
  (``Consumer._commit``); here it is a warning: the next owner re-reads from the last commit, which
  the per-user fences make a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple, cast

import aiokafka
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from faust.transport.drivers import aiokafka as driver

from attribution.runtime.align import Tp

log = logging.getLogger(__name__)
FETCH_WAIT_MS = 100


class FetchMark(NamedTuple):
    """What the consumer knew of a topic-partition when it last handed records to Faust: the highest
    offset handed on since the assignment (None: none yet), its fetch position (past skipped
    transaction markers and aborted records) and the high watermark."""

    last: int | None
    position: int
    end: int


class AttributionConsumerThread(driver.AIOKafkaConsumerThread):
    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        """Faust's fetch, noting per topic-partition what was handed on and where the fetch stands,
        taken together on the consumer's thread (the agents read them for the end of a partition)."""
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        marks: dict[Tp, FetchMark] = cast(Any, self.app).attribution_fetched
        assignment = consumer._subscription.subscription
        assignment = assignment.assignment if assignment is not None else None
        if assignment is None:
            return records
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if state is None or not state.has_valid_position or state.highwater is None:
                continue
            key = (tp.topic, tp.partition)
            handed = records.get(tp)
            before = marks.get(key)
            last = before.last if before is not None else None
            if handed:
                last = max(last if last is not None else -1, handed[-1].offset)
            marks[key] = FetchMark(last, state.position, state.highwater)
        return records

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "attribution_fetch_wait_ms", FETCH_WAIT_MS)
        # set before the consumer starts: its fetcher and coordinator are built from these in start()
        consumer._partition_assignment_strategy = (self.app.assignor,)
        consumer._isolation_level = "read_committed"
        consumer._fetch_max_wait_ms = wait_ms
        return consumer


class AttributionConsumer(driver.Consumer):
    def _new_consumer_thread(self) -> AttributionConsumerThread:
        return AttributionConsumerThread(self, loop=self.loop, beacon=self.beacon)


class AttributionTransport(driver.Transport):
    """Faust's aiokafka transport with the consumer above."""

    Consumer = AttributionConsumer


def install(app: Any, fetch_wait_ms: int) -> None:
    """Make ``app`` consume through ``AttributionTransport``; before its consumer exists."""
    if app._consumer is not None:
        raise RuntimeError("mount the attribution agents before the Faust app starts")
    url = str(app.conf.broker_consumer[0])
    if not url.startswith(("kafka://", "aiokafka://")):
        raise ValueError(f"the attribution agents need Faust's aiokafka driver, not {url}")
    app.attribution_fetch_wait_ms = fetch_wait_ms
    app.attribution_fetched = {}
    app.transport = AttributionTransport(app.conf.broker_consumer, app)


def _thread(app: Any) -> Any:
    return app.consumer._thread


def commit(app: Any, offsets: dict[Tp, int], timeout_s: float = 60.0) -> bool:
    """Commit ``offsets`` (the first offset not processed, per topic-partition) for the app's group,
    on the consumer's own thread and event loop; blocks until done (call it from any other thread).
    False, with a warning, when the broker refuses: the partitions moved, the next owner re-reads."""
    thread = _thread(app)
    wanted = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}

    async def in_consumer_thread() -> bool:
        consumer = cast(aiokafka.AIOKafkaConsumer, thread._ensure_consumer())
        owned = {tp: o for tp, o in wanted.items() if tp in consumer.assignment()}
        if owned:  # none left (revoked meanwhile): nothing to commit
            await consumer.commit(owned)
        return bool(owned)

    future = asyncio.run_coroutine_threadsafe(in_consumer_thread(), thread.thread_loop)
    try:
        return future.result(timeout_s)
    except (KafkaError, TimeoutError) as exc:
        future.cancel()
        log.warning("offsets not committed (%s); the batch will be re-read", type(exc).__name__)
        return False


def fetched(app: Any) -> dict[Tp, FetchMark]:
    """The fetch marks of the app's consumer (see ``FetchMark``), per topic-partition."""
    return cast(dict[Tp, FetchMark], app.attribution_fetched)
