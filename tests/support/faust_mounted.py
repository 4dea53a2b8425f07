"""A Faust app of a user's own, with one agent of its own (it upper-cases ECHO_IN into ECHO_OUT),
into which the attribution agents are mounted; run by tests/integration/test_faust.py."""

from __future__ import annotations

import os

import faust

from attribution.infra.config import load_config
from attribution.runtime.faust import mount

config = load_config()
app = faust.App(
    config.group_id,  # the app's id is the consumer group of the inputs
    datadir=os.environ["FAUST_DATADIR"],
    broker=f"kafka://{config.kafka_bootstrap_servers}",
    broker_session_timeout=6.0,  # the local broker: a join takes about half of it (see README)
    broker_heartbeat_interval=0.5,
    web_enabled=False,
)
echo_in = app.topic(os.environ["ECHO_IN"], value_type=bytes, value_serializer="raw")
echo_out = app.topic(os.environ["ECHO_OUT"], value_type=bytes, value_serializer="raw")


@app.agent(echo_in)
async def shout(values: faust.StreamT[bytes]) -> None:
    async for value in values:
        await echo_out.send(value=value.upper())


agents = mount(app, config)

if __name__ == "__main__":
    app.main()
