"""The Faust ceiling of ``make bench``: a faust-streaming agent that does nothing with its records.

Run as ``python -m attribution.devkit.faust_ceiling worker`` with CEILING_TOPICS (comma-separated),
CEILING_RECORDS, CEILING_OUT and the worker's KAFKA_BOOTSTRAP_SERVERS / ATTRIBUTION_GROUP_ID /
ATTRIBUTION_SESSION_TIMEOUT_MS: it takes batches with ``noack_take`` as the attribution agent does,
counts them, writes the records/s from the first batch to the last to CEILING_OUT and exits. What
the Faust runtime's catch-up can reach on this machine, before any attribution work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust

from attribution.infra.config import load_config

config = load_config()
app = faust.App(
    config.group_id,
    datadir=str(Path(os.environ["CEILING_OUT"]).parent / "faust-data"),  # the bench removes it
    broker=f"kafka://{config.kafka_bootstrap_servers}",
    broker_session_timeout=config.session_timeout_ms / 1000,
    broker_heartbeat_interval=max(0.1, config.session_timeout_ms / 10_000),
    consumer_auto_offset_reset="earliest",
    topic_allow_declare=False,
    topic_disable_leader=True,
    web_enabled=False,
    stream_wait_empty=False,
)
topics = app.topic(
    *os.environ["CEILING_TOPICS"].split(","),
    key_type=bytes,
    value_type=bytes,
    value_serializer="raw",
    acks=False,
)
wanted = int(os.environ["CEILING_RECORDS"])


@app.agent(topics)
async def count(stream: Any) -> None:
    seen, began = 0, 0.0
    async for events in stream.noack_take(config.batch_size, within=config.poll_timeout_ms / 1000):
        began = began or time.perf_counter()
        seen += len(events)
        if seen >= wanted:
            Path(os.environ["CEILING_OUT"]).write_text(str(seen / (time.perf_counter() - began)))
            os._exit(0)  # a measurement: no shutdown to wait for


if __name__ == "__main__":
    app.main()
