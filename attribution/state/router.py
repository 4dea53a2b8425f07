"""Send script calls to the right Redis: one server, or the primaries of a Redis Cluster.

Every script call names keys of a single hash slot, so it runs unchanged on a cluster (no CROSSSLOT,
no key built inside Lua). ``split`` groups a batch's keys accordingly: one group on a single server
(one call per batch), one group per hash slot on a cluster. ``run`` pipelines the calls, one round
trip per server, loads scripts a server lost (NOSCRIPT), and follows MOVED/ASK after a reshard.

``REDIS_URL`` carries the login and TLS: ``rediss://USER:PASSWORD@host:port/0?ssl_ca_certs=/ca.pem``
(redis-py's URL options: ``ssl_certfile``/``ssl_keyfile`` for a client certificate,
``ssl_cert_reqs``, ``ssl_check_hostname``), for one server and, unchanged, for every node of a
cluster. ``acl_rule`` gives the least-privilege ACL of the engine's Redis user.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from attribution.errors import AttributionError, BadInput, BadSettings, Unavailable
from attribution.state.scripts import SCRIPTS, Script

ROUTING_RETRIES = 8  # with backoff: about 3.5 s for a slot to settle during a reshard
BAD_INPUT = "ATTRIBUTION_BAD_INPUT"  # the marker our scripts put in errors caused by the data
Client = redis.Redis | RedisCluster


class Call(NamedTuple):
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]


#: Every command the worker and ``attribution tally`` send, the ones inside the Lua scripts included
#: (``tests/unit/test_redis_acl.py`` checks the list against the scripts and the state layer).
WORKER_COMMANDS = (
    # connection: a liveness check, the cluster probe of ``connect``, a database other than 0
    *("ping", "info", "select"),
    # the scripts, and what they call
    *("evalsha", "script|load", "get", "set", "getrange", "hget", "hset", "hsetnx", "hincrby"),
    *("pexpire", "persist", "zadd", "zscore", "zrem"),
    # plain reads and writes
    *("hmget", "hgetall", "hvals", "zrange", "sadd", "smembers"),
    # a cluster client: the slot map, the command table, a slot being moved
    *("cluster|slots", "command", "asking"),
)
#: What ``attribution rebuild`` needs besides: deleting every key under the prefix.
REBUILD_COMMANDS = ("scan", "unlink")


def acl_rule(prefix: str, rebuild: bool = False) -> str:
    """The permissions of the engine's Redis user, in ``ACL SETUSER`` syntax: keys under ``prefix:``
    only, no pub/sub channel, and only the commands it sends (``rebuild``: those of ``attribution
    rebuild`` too). Use as ``ACL SETUSER attribution on >PASSWORD <rule>`` (or an aclfile line).

    Not ``+@all -@dangerous``: INFO (how ``connect`` tells a cluster) is in @dangerous, and the rest
    of @all (DEL, RENAME, EVAL of any script, SCAN of every key name...) is more than a worker needs.
    CLIENT SETINFO, which redis-py sends on connecting (Redis >= 7.2, valkey), is not needed: a
    refusal is ignored, and Redis 7.0 refuses an ACL rule naming it."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix)
    commands = WORKER_COMMANDS + (REBUILD_COMMANDS if rebuild else ())
    return " ".join([f"~{pattern}:*", "resetchannels", "-@all", *(f"+{c}" for c in commands)])


def connect(url: str) -> Client:
    """A client for ``url``: a cluster client when the server says it is in cluster mode.

    Errors name REDIS_URL, never its password: BadSettings when Redis refuses the login or a command
    (WRONGPASS, NOAUTH, NOPERM) or the URL holds an option redis-py does not know; Unavailable when
    no server answers there (refused, timed out, a TLS handshake that failed)."""
    options: dict[str, Any] = {"socket_timeout": 30, "socket_connect_timeout": 5}
    try:
        client = redis.Redis.from_url(url, health_check_interval=30, **options)
        enabled = int(client.info("cluster").get("cluster_enabled", 0))
        if not enabled:
            return client
        client.close()
        return RedisCluster.from_url(url, **options)
    except (redis.RedisError, RedisClusterException, TypeError, ValueError) as exc:
        raise _explain(exc, url) from None


def _explain(exc: Exception, url: str) -> AttributionError:
    """``exc`` (raised while connecting to ``url``) as an error naming REDIS_URL, without secrets."""
    parts = urlsplit(url)
    user = unquote(parts.username or "") or "default"
    text = str(exc)
    for secret in {parts.password, unquote(parts.password or "")} - {None, ""}:
        text = text.replace(str(secret), "***")  # redis-py never quotes it; make sure
    if isinstance(exc, AuthenticationError):
        return BadSettings("REDIS_URL", f"Redis refused the login of user {user!r}: {text}")
    if isinstance(exc, NoPermissionError):
        return BadSettings(
            "REDIS_URL",
            f"Redis user {user!r} may not run a command the engine needs "
            f"(attribution.state.router.acl_rule lists them): {text}",
        )
    if isinstance(exc, TypeError | ValueError):
        hint = " (ssl_* options need a rediss:// URL)" if "ssl" in text and parts.scheme == "redis" else ""
        return BadSettings("REDIS_URL", f"an option of the URL is refused: {text}{hint}")
    where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    what = "failed the TLS handshake" if cause is not None else "does not answer"
    return Unavailable(f"Redis at REDIS_URL ({where}) {what}: {text}")


class Router:
    """Runs script calls and plain pipelines on a client; see the module docstring."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)

    def split(self, keys: Sequence[str]) -> list[list[int]]:
        """Indexes of ``keys`` grouped so that each group may go to one script call."""
        if not keys:
            return []
        if not isinstance(self.client, RedisCluster):
            return [list(range(len(keys)))]
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key_slot(key.encode()), []).append(i)
        return list(groups.values())

    def pipeline(self) -> Any:
        """A non-transactional pipeline for plain commands (a cluster pipeline routes them)."""
        return self.client.pipeline(transaction=False)

    def primaries(self) -> list[redis.Redis]:
        if isinstance(self.client, RedisCluster):
            nodes = self.client.get_primaries()  # type: ignore[no-untyped-call]
            return [node.redis_connection for node in nodes]
        return [self.client]

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """Every call's reply, in order. An error our scripts raise about the data (marked
        ``ATTRIBUTION_BAD_INPUT``) is BadInput; errors about Redis itself (OOM, READONLY,
        connection), even when a command inside a script hits them, propagate unchanged.

        Only calls that did not run are sent again: NOSCRIPT (the scripts are loaded on that server
        first), MOVED and TRYAGAIN (after refreshing the slot map), ASK (to the node importing the
        slot, preceded by ASKING, while a reshard moves it)."""
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        asked: dict[int, tuple[str, int]] = {}
        for attempt in range(ROUTING_RETRIES):
            retry: list[int] = []
            moved = False
            for conn, indexes in self._by_server(calls, pending, asked):
                pipe = conn.pipeline(transaction=False)
                for i in indexes:
                    c = calls[i]
                    if i in asked:
                        pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
                    pipe.execute_command("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args)  # type: ignore[no-untyped-call]
                results = iter(pipe.execute(raise_on_error=False))
                lost_scripts = False
                for i in indexes:
                    if i in asked:
                        next(results)  # ASKING's reply
                    reply = next(results)
                    if isinstance(reply, NoScriptError):
                        lost_scripts = True
                        retry.append(i)  # to the same server (asked stays as it is)
                        continue
                    asked.pop(i, None)
                    if isinstance(reply, AskError):
                        asked[i] = reply.node_addr
                        retry.append(i)
                    elif isinstance(reply, MovedError | TryAgainError):
                        moved = True
                        retry.append(i)
                    elif isinstance(reply, ResponseError):
                        if BAD_INPUT in str(reply):  # raised by the script about the data
                            raise BadInput(f"{calls[i].script.name}.lua: {reply}") from reply
                        raise reply  # OOM, READONLY, NOPERM...: about Redis, never the data
                    elif isinstance(reply, Exception):
                        raise reply
                    else:
                        replies[i] = reply
                if lost_scripts:
                    load_scripts(conn)
            if not retry:
                return replies
            pending = retry
            if moved and isinstance(self.client, RedisCluster):
                self.client.nodes_manager.initialize()
            time.sleep(min(1.0, 0.05 * 2**attempt))
        raise AttributionError(
            f"{len(pending)} script calls could not be routed after {ROUTING_RETRIES} tries"
        )

    def _by_server(
        self, calls: Sequence[Call], indexes: list[int], asked: dict[int, tuple[str, int]]
    ) -> list[tuple[redis.Redis, list[int]]]:
        if not isinstance(self.client, RedisCluster):
            return [(self.client, indexes)]
        servers: dict[str, tuple[redis.Redis, list[int]]] = {}
        for i in indexes:
            if i in asked:
                host, port = asked[i]
                node = self.client.get_node(host=host, port=port)  # type: ignore[no-untyped-call]
                if node is None:  # a node we did not know yet
                    self.client.nodes_manager.initialize()
                    node = self.client.get_node(host=host, port=port)  # type: ignore[no-untyped-call]
            else:
                node = self.client.nodes_manager.get_node_from_slot(key_slot(calls[i].keys[0].encode()))
            servers.setdefault(node.name, (node.redis_connection, []))[1].append(i)
        return list(servers.values())


def close(client: Client) -> None:
    """Close ``client`` and, on a cluster, the connections it opened to each node."""
    for conn in Router(client).primaries():
        conn.close()
    client.close()


def load_scripts(conn: redis.Redis) -> None:
    for script in SCRIPTS:
        conn.script_load(script.source)
