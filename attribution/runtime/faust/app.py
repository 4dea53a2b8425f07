"""A Faust app for the attribution agents, and the way to mount them into an app of your own."""

from __future__ import annotations

import logging
import ssl
import tempfile
from typing import Any, cast

import faust
from faust.types.enums import ProcessingGuarantee

from attribution.errors import AttributionError, BadSettings
from attribution.infra.config import Config, kafka_env_name
from attribution.runtime.faust.agents import AttributionAgents

log = logging.getLogger(__name__)


def credentials(config: Config) -> faust.types.auth.CredentialsT | None:
    """Faust (aiokafka) credentials from the same KAFKA_* variables librdkafka reads:
    KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
    KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CA_LOCATION, a client certificate
    (KAFKA_SSL_CERTIFICATE_LOCATION, KAFKA_SSL_KEY_LOCATION, KAFKA_SSL_KEY_PASSWORD) and
    KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none. Another mechanism is refused, naming it. (The
    outputs' producer and the settings reader are librdkafka clients in both runtimes and take every
    KAFKA_* property.)"""
    conf = config.kafka()
    protocol = str(conf.get("security.protocol", "PLAINTEXT")).upper()
    context = None
    if protocol in {"SSL", "SASL_SSL"}:
        context = ssl.create_default_context(cafile=conf.get("ssl.ca.location"))
        if conf.get("ssl.certificate.location"):
            context.load_cert_chain(
                conf["ssl.certificate.location"], conf.get("ssl.key.location"), conf.get("ssl.key.password")
            )
        if str(conf.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
            context.check_hostname = False
    if protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
        mechanism = str(conf.get("sasl.mechanism", "PLAIN")).upper()
        if mechanism not in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
            raise BadSettings(
                kafka_env_name("sasl.mechanism"),
                f"{mechanism} is not supported by --runtime faust (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            )
        return faust.SASLCredentials(
            username=conf.get("sasl.username"),
            password=conf.get("sasl.password"),
            mechanism=mechanism,
            ssl_context=context,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol != "PLAINTEXT":
        raise BadSettings(kafka_env_name("security.protocol"), f"unknown protocol {protocol}")
    return None


def create_app(config: Config, datadir: str) -> faust.App:
    """A Faust app whose consumer group is ATTRIBUTION_GROUP_ID, configured for the engine: no web
    server (the worker serves /metrics, /healthz and /readyz itself), no topic creation (``attribution
    topics create`` owns the topics), no leader topic; Faust's data directory (for tables, which the
    engine has none of) is ``datadir``."""
    session_s = config.session_timeout_ms / 1000
    return faust.App(
        config.group_id,
        datadir=datadir,
        broker=[f"kafka://{server.strip()}" for server in config.kafka_bootstrap_servers.split(",")],
        broker_credentials=credentials(config),
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.1, min(3.0, session_s / 10)),
        broker_request_timeout=max(90.0, session_s + 5),
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        stream_wait_empty=False,
    )


def mount(app: faust.App, config: Config, agents: AttributionAgents | None = None) -> AttributionAgents:
    """Add the attribution agents to ``app`` (before it starts); returns them. The app's id is the
    inputs' consumer group: it must be ATTRIBUTION_GROUP_ID."""
    if app.conf.consumer_group_instance_id:
        # a static member may rejoin in the same generation: records fetched before a revocation
        # would then look current
        raise BadSettings("consumer_group_instance_id", "the attribution agents need dynamic membership")
    if app.conf.consumer_auto_offset_reset != "earliest":
        raise BadSettings(
            "consumer_auto_offset_reset",
            "the attribution agents read a new group's inputs from the beginning: set it to 'earliest'",
        )
    if cast(Any, app.conf).processing_guarantee != ProcessingGuarantee.AT_LEAST_ONCE:
        raise BadSettings("processing_guarantee", "the attribution agents commit their own offsets")
    if app.conf.id != config.group_id:
        raise BadSettings(
            "ATTRIBUTION_GROUP_ID",
            f"the Faust app's id {app.conf.id!r} is the consumer group of the inputs; "
            f"set ATTRIBUTION_GROUP_ID={app.conf.id} or name the app {config.group_id!r}",
        )
    agents = agents or AttributionAgents(config)
    agents.mount(app)
    return agents


def run_worker(config: Config) -> None:
    """``attribution worker --runtime faust``: run the agents on an app of their own until SIGTERM or
    SIGINT (Faust's worker handles both: the batch in flight finishes, tallies are published)."""
    if config.log_level != "DEBUG":  # Faust, mode and aiokafka narrate every service start and stop
        for name in ("faust", "mode", "aiokafka", "attribution.runtime.faust.bridge"):
            logging.getLogger(name).setLevel(logging.WARNING)
    agents = AttributionAgents(config)
    with tempfile.TemporaryDirectory(prefix="attribution-faust-") as datadir:
        app = create_app(config, datadir)
        mount(app, config, agents)
        worker = faust.Worker(
            app,
            loglevel=config.log_level,
            override_logging=False,
            quiet=True,
            redirect_stdouts=False,
        )
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            if agents.failure is None and exc.code not in (0, None):
                raise
    if agents.failure is not None:
        raise agents.failure
    if app.crash_reason is not None:  # a service of Faust's own (consumer, fetcher...) crashed
        raise AttributionError(f"the Faust app stopped on an error: {app.crash_reason!r}")
