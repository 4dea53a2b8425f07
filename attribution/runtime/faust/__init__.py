"""The faust-streaming runtime: the same engine as attribution agents on a Faust app.

``attribution worker --runtime faust`` runs them on an app of their own (``app.run``). To run them
inside an existing Faust app, mount them before it starts::

    import faust
    from attribution.infra.config import load_config
    from attribution.runtime.faust import mount

    app = faust.App("my-app", broker="kafka://broker:9092")
    agents = mount(app, load_config())  # ATTRIBUTION_* / KAFKA_* / REDIS_URL from the environment

The app's id becomes the consumer group of the inputs, so it must equal ``ATTRIBUTION_GROUP_ID``
(``mount`` refuses another).
"""

from __future__ import annotations

from attribution.runtime.faust.agents import AttributionAgents
from attribution.runtime.faust.app import create_app, mount, run_worker

__all__ = ["AttributionAgents", "create_app", "mount", "run_worker"]
