"""Rebalances while a worker holds back-pressured (paused) partitions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer

from attribution.contract.topics import INPUTS
from tests.support.kafka import Engine, engine_config
from tests.support.scenarios import PROJECT, send, settings

pytestmark = pytest.mark.integration


def wait_for(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_partition_paused_before_a_rebalance_is_consumed_after_it(
    kafka_bootstrap: str, redis_url: str
) -> None:
    config = engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8], max_buffered=100, batch_size=50)
    engine = Engine(config.model_copy(update={"partitions": 1}))
    engine.put_settings(settings())
    t0 = int(time.time() * 1000)
    engine.produce([send(f"s{i}", "camp", f"d{i}", t0 + i, user=f"u{i}") for i in range(300)])
    thread = engine.worker_thread()
    worker = thread.worker
    held = [True]
    release = worker.aligner.release
    worker.aligner.release = lambda now_ms: [] if held[0] else release(now_ms)  # type: ignore[method-assign]
    try:
        wait_for(lambda: bool(worker.paused), 30, "back-pressure to pause sends")
        # a second member joins and leaves: every partition is revoked and assigned again
        other = Consumer(
            engine.config.kafka(
                {
                    "group.id": engine.config.group_id,
                    "session.timeout.ms": 6000,
                    "partition.assignment.strategy": "range",
                    "enable.auto.commit": False,  # it must not move the group past unprocessed records
                }
            )
        )
        got: list[int] = []
        other.subscribe(
            [engine.config.topic(k) for k in ("sends", "clicks", "goals")],
            on_assign=lambda c, ps: got.append(len(ps)),
        )
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            other.consume(10, 0.2)
        other.close()
        registry = worker.metrics.registry

        def assignments() -> float:
            return registry.get_sample_value("attribution_rebalances_total", {"kind": "assign"}) or 0.0

        # assigned at start, when the other member joined, and again when it left
        wait_for(
            lambda: assignments() >= 3 and len(worker.assigned) == len(INPUTS),
            30,
            "the worker to own all again",
        )
        held[0] = False
        key = worker.keys.campaign(PROJECT, "camp")
        wait_for(lambda: worker.store.counters([key])[0].get("sends") == "300", 30, "all 300 sends counted")
    finally:
        thread.stop()
        engine.close()
