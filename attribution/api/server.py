"""``attribution serve``: follow the output topics (tallies, subscriptions and, unless turned off,
conversions) into the table, serve it with uvicorn until SIGTERM."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from types import FrameType

import uvicorn

from attribution.api.app import create_app
from attribution.api.metrics import ApiMetrics
from attribution.api.table import ResultTable
from attribution.errors import BadSettings
from attribution.infra.config import Config
from attribution.runtime.follower import TopicFollower

log = logging.getLogger(__name__)


def serve(config: Config) -> None:
    """Run the API server until SIGTERM/SIGINT (uvicorn's handlers: in-flight requests finish)."""
    table = ResultTable()
    metrics = ApiMetrics()

    def on_record(kind: str, key: bytes | None, value: bytes, partition: int, offset: int) -> None:
        metrics.records.labels(kind).inc()
        table.apply(kind, key, value, partition, offset)

    # first: a port in use is refused before anything else starts
    sock = _listen(config.api_host, config.api_port)
    kinds = ["tallies", "subscriptions", *(["conversions"] if config.api_conversions else [])]
    try:
        follower = TopicFollower(config, kinds, on_record)
    except BaseException:
        sock.close()
        raise
    token = config.api_token.get_secret_value() if config.api_token else None
    app = create_app(table, metrics, follower.caught_up.is_set, lambda: follower.alive, token)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # our logging (text or JSON), not uvicorn's
            access_log=False,  # attribution_api_requests_total counts them
            server_header=False,
            timeout_graceful_shutdown=5,  # event streams never end by themselves
        )
    )
    # uvicorn answers SIGTERM/SIGINT with a graceful shutdown, then raises the signal again for the
    # handler that was there before: this one, so that a requested stop exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    follower.start()
    log.info("serving on http://%s:%d/ (reading %s)", config.api_host, config.api_port, ", ".join(kinds))
    try:
        server.run(sockets=[sock])
    finally:
        follower.stop()
        sock.close()
    if follower.error is not None:
        raise follower.error
    log.info("serve stopped")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket (an IPv6 one for a host such as ``::``); BadSettings naming the setting
    at fault when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        # create_server appends "(while attempting to bind on address ...)" to the reason: the
        # message names the address already
        reason = (exc.strerror or str(exc)).split(" (while attempting to bind", 1)[0]
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno is not None and (exc.errno < 0 or exc.errno == errno.EADDRNOTAVAIL):
            # a name that does not resolve (getaddrinfo's codes are negative), an address not here
            raise BadSettings("ATTRIBUTION_API_HOST", f"cannot listen on {where} ({reason})") from None
        raise BadSettings(
            "ATTRIBUTION_API_PORT", f"cannot listen on {where} ({reason}); pick a free port"
        ) from None


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("signal %d: stopped", signum)
