"""Redis with a password, a least-privilege ACL user and TLS: the engine works through them, and
refuses (naming REDIS_URL, never the password) a wrong login or a server it cannot trust.

Every test starts its own redis-server (Debian's, built with TLS) with a password on the default
user and the ``attribution`` user of ``acl_rule``; certificates come from a throw-away trustme CA.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from attribution.errors import AttributionError, BadSettings, Unavailable
from attribution.runtime.worker import Worker
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore
from attribution.state.router import acl_rule, close, connect
from tests.support.kafka import Engine, engine_config
from tests.support.scenarios import goal, send, settings
from tests.support.secure import USER, Certs, issue_certs, secret, secured_redis

pytestmark = pytest.mark.integration
T0 = int(time.time() * 1000) - 3600_000


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir removed after the test (certificates, private keys, worker logs)."""
    with tempfile.TemporaryDirectory(prefix="attribution-security-") as directory:
        yield Path(directory)


@pytest.fixture
def certs(scratch: Path) -> Certs:
    return issue_certs(scratch)


@pytest.fixture
def prefix() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


def assert_names_redis_url(exc: AttributionError, *secrets: str) -> None:
    text = str(exc)
    assert "REDIS_URL" in text, text
    for s in secrets:
        assert s not in text and quote(s, safe="") not in text, text


@pytest.mark.parametrize("setup", ["acl", "acl+tls", "cluster+acl+tls"])
def test_a_worker_attributes_through_acl_and_tls(
    setup: str, kafka_bootstrap: str, prefix: str, scratch: Path
) -> None:
    """End to end (settings, a send, a goal -> a conversion) as the least-privilege ACL user, in
    plain TCP, over TLS (CA from the URL), and on a 3-master cluster over TLS; Redis logs no refused
    command or key (ACL LOG is empty), so ``acl_rule`` grants all the worker needs."""
    tls = issue_certs(scratch) if "tls" in setup else None
    with secured_redis(prefix, tls, cluster=setup.startswith("cluster")) as red:
        if tls is not None:
            assert red.url.startswith("rediss://") and "ssl_ca_certs=" in red.url
        unique = uuid.uuid4().hex[:8]
        eng = Engine(engine_config(kafka_bootstrap, red.url, unique, redis_prefix=prefix))
        try:
            eng.put_settings(settings())
            conversions = eng.reader("conversions")
            worker = eng.worker_thread()
            try:
                eng.produce(
                    [
                        send("sec-s", "sec", "sec-d", T0, user="sec-u"),
                        goal("sec-g", "signup", "sec-d", T0 + 1000, user="sec-u"),
                    ]
                )
                conversions.until(
                    lambda rs: any(r["campaign_id"] == "sec" and r["event"] == "signup" for r in rs),
                    what="the conversion of campaign sec",
                )
            finally:
                worker.stop()
        finally:
            eng.close()
        assert red.denied() == []
        written: list[str] = []
        for node in red.nodes():
            with node.admin() as admin:
                written += admin.scan_iter(count=1000)
        assert written and all(key.startswith(f"{prefix}:") for key in written)


def test_the_acl_user_is_confined_to_its_prefix(prefix: str) -> None:
    """Keys outside the prefix, pub/sub, admin and destructive commands are refused; ``attribution
    rebuild`` (SCAN + UNLINK) needs ``acl_rule(prefix, rebuild=True)``."""
    keys = Keys(prefix)
    with secured_redis(prefix) as red:
        with red.server.admin() as admin:
            admin.set("other-app:key", "theirs")
        client = connect(red.url)
        try:
            store = RedisStore(client, keys, 3_600_000)
            assert store.init_generation("v2-test") == "v2-test"
            assert isinstance(client, redis.Redis)
            for refused in (
                lambda: client.get("other-app:key"),
                lambda: client.set("other-app:key", "mine"),
                lambda: client.publish("news", "x"),
                client.flushall,
                lambda: client.config_get("requirepass"),
                lambda: client.keys("*"),
                lambda: client.eval("return 1", 0),
                store.wipe,  # SCAN: for rebuild only
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    refused()
        finally:
            close(client)
        with red.server.admin() as admin:
            assert admin.get("other-app:key") == "theirs"
            admin.execute_command("ACL", "SETUSER", USER, *acl_rule(prefix, rebuild=True).split())
        store = RedisStore.from_url(red.url, keys, 3_600_000)
        try:
            assert store.wipe() == 1  # the generation marker; the other application's key stays
        finally:
            store.close()
        with red.server.admin() as admin:
            assert admin.get("other-app:key") == "theirs"


def test_a_password_with_url_reserved_characters_works_percent_encoded(prefix: str) -> None:
    password = f"p@ss:w/rd%?#{secret('x')}"
    with secured_redis(prefix) as red:
        with red.server.admin() as admin:
            admin.execute_command("ACL", "SETUSER", "odd", "on", f">{password}", *acl_rule(prefix).split())
        client = connect(red.server.url_for("odd", password, db=0))
        try:
            assert client.ping()
        finally:
            close(client)


def test_a_wrong_password_is_refused_naming_redis_url(kafka_bootstrap: str, prefix: str) -> None:
    with secured_redis(prefix) as red:
        wrong = secret("wrong-pw")
        for url, user in (
            (red.server.url_for(USER, wrong, db=0), USER),
            (red.server.url_for("nobody", red.password, db=0), "nobody"),
            (red.server.url_for(db=0), "default"),  # no login at all
        ):
            with pytest.raises(BadSettings) as caught:
                connect(url)
            assert_names_redis_url(caught.value, wrong, red.password, red.admin_password)
            assert f"user {user!r}" in str(caught.value)
        config = engine_config(
            kafka_bootstrap, red.server.url_for(USER, wrong, db=0), "x", redis_prefix=prefix
        )
        with pytest.raises(BadSettings) as caught:
            Worker(config)
        assert caught.value.field == "REDIS_URL"
        assert_names_redis_url(caught.value, wrong)


def test_a_server_certificate_from_an_untrusted_ca_is_refused(
    certs: Certs, prefix: str, scratch: Path
) -> None:
    other = scratch / "other"
    other.mkdir()
    stranger = issue_certs(other)  # the client trusts this CA, not the one that signed the server's
    with secured_redis(prefix, certs) as red:
        url = red.url.replace(quote(str(certs.ca)), quote(str(stranger.ca)))
        assert url != red.url
        with pytest.raises(Unavailable) as caught:
            connect(url)
        assert_names_redis_url(caught.value, red.password)
        assert "TLS" in str(caught.value) and "certificate verify failed" in str(caught.value)
        plain = red.server.url_for(USER, red.password, db=0).replace("rediss://", "redis://").split("?")[0]
        with pytest.raises(AttributionError) as refused:  # no TLS at all: the server never answers
            connect(plain + "?socket_timeout=2")
        assert_names_redis_url(refused.value, red.password)


def test_client_certificates_pass_through_the_url(prefix: str, scratch: Path) -> None:
    """A server that demands client certificates: refused without one, accepted with
    ``ssl_certfile`` / ``ssl_keyfile`` in REDIS_URL."""
    certs = issue_certs(scratch, auth_clients="yes")
    with secured_redis(prefix, certs) as red:
        with pytest.raises(Unavailable) as caught:
            connect(red.url)
        assert_names_redis_url(caught.value, red.password)
        cert, key = quote(str(certs.client_cert)), quote(str(certs.client_key))
        url = f"{red.url}&ssl_certfile={cert}&ssl_keyfile={key}"
        client = connect(url)
        try:
            assert client.ping()
        finally:
            close(client)
