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
from typing import Any, cast

import aiokafka
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from attribution.runtime.align import Tp

log = logging.getLogger(__name__)
FETCH_WAIT_MS = 100


class AttributionConsumerThread(driver.AIOKafkaConsumerThread):
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
    app.transport = AttributionTransport(app.conf.broker_consumer, app)


def _thread(app: Any) -> Any:
    return app.consumer._thread


def commit(app: Any, offsets: dict[Tp, int], timeout_s: float = 60.0) -> bool:
    """Commit ``offsets`` (the first offset not processed, per topic-partition) for the app's group,
    on the consumer's own thread and event loop; blocks until done (call it from any other thread).
    False, with a warning, when the broker refuses: the partitions moved, the next owner re-reads."""
    thread = _thread(app)
    wanted = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}

    async def in_consumer_thread() -> None:
        consumer = cast(aiokafka.AIOKafkaConsumer, thread._ensure_consumer())
        owned = consumer.assignment()
        await consumer.commit({tp: o for tp, o in wanted.items() if tp in owned})

    try:
        asyncio.run_coroutine_threadsafe(in_consumer_thread(), thread.thread_loop).result(timeout_s)
    except KafkaError as exc:
        log.warning("offsets not committed (%s); the batch will be re-read", exc)
        return False
    return True


def highwater(app: Any, tp: Tp) -> int | None:
    """The end of ``tp`` from the last fetch response (no broker round trip); None before one."""
    consumer = _thread(app)._consumer
    if consumer is None:
        return None
    try:
        end = consumer.highwater(TopicPartition(*tp))
    except Exception:  # not assigned (any more): unknown
        return None
    return cast(int | None, end)


async def position(app: Any, tp: Tp) -> int | None:
    """Where the consumer reads ``tp`` next (after Faust's seek to the committed offset)."""
    try:
        return cast(int | None, await app.consumer.position(TP(*tp)))
    except Exception:  # revoked meanwhile: unknown
        return None
