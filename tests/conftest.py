"""Shared fixtures.

Services are picked in this order: environment variables (`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`,
`REDIS_CLUSTER_URLS`) -> testcontainers when a Docker engine answers (and `testcontainers` is
installed) -> local subprocesses from `attribution.devkit.embedded` (tansu, valkey, redis-server).
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest
import redis

from attribution.devkit import embedded

# --- service discovery helpers -------------------------------------------------------------------


@functools.cache
def _docker_answers() -> bool:
    """True when a Docker engine answers `docker info` within 3 s."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _testcontainers(module: str) -> ModuleType | None:
    """`testcontainers.<module>` when Docker answers and the package is installed, else None."""
    if not _docker_answers():
        return None
    try:
        return importlib.import_module(f"testcontainers.{module}")
    except ImportError:
        return None


def _container_redis_url(image: str) -> Iterator[str] | None:
    """A generator yielding `redis://host:port/0` of a throw-away container, or None without Docker."""
    tc = _testcontainers("redis")
    if tc is None:
        return None

    def run() -> Iterator[str]:
        with tc.RedisContainer(image=image) as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"

    return run()


# --- Kafka-protocol broker -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a Kafka-protocol broker (tansu when started locally)."""
    if env := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield env
        return
    tc = _testcontainers("kafka")
    if tc is not None:
        with tc.KafkaContainer() as container:
            yield str(container.get_bootstrap_server())
        return
    with embedded.start_kafka() as broker:
        yield broker.url


# --- Redis / valkey ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a standalone valkey (the flavour the engine targets by default)."""
    if env := os.environ.get("REDIS_URL"):
        yield env
        return
    container = _container_redis_url("valkey/valkey:8.1")
    if container is not None:
        yield from container
        return
    with embedded.start_redis(flavour="valkey") as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """URL of a Redis 7.0 server (Debian redis-server), to check compatibility with real Redis."""
    container = _container_redis_url("redis:7.0")
    if container is not None:
        yield from container
        return
    if embedded.redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server) and no Docker engine")
    with embedded.start_redis(flavour="redis") as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_urls() -> Iterator[list[str]]:
    """Node URLs of a 3-master valkey cluster (`REDIS_CLUSTER_URLS`, comma-separated, overrides)."""
    if env := os.environ.get("REDIS_CLUSTER_URLS"):
        yield [url.strip() for url in env.split(",") if url.strip()]
        return
    with embedded.start_redis_cluster(masters=3, flavour="valkey") as cluster:
        yield cluster.urls


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on `redis_url`, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


# --- per-test helpers ----------------------------------------------------------------------------


@pytest.fixture
def unique() -> str:
    """A short unique string for topic names, group ids and key prefixes."""
    return f"t{uuid.uuid4().hex[:12]}"


# --- runtimes ------------------------------------------------------------------------------------

#: The worker runtimes every shared integration test runs on (`attribution worker --runtime ...`).
RUNTIMES = ["confluent", "faust"]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """The worker runtime of the test: the confluent-kafka batch worker, then the Faust agents."""
    return str(request.param)


@pytest.fixture(
    params=[("redis", "confluent"), ("cluster", "confluent"), ("redis", "faust")],
    ids=["redis-confluent", "cluster-confluent", "redis-faust"],
)
def redis_and_runtime(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(name, REDIS_URL, runtime) for the long tests: each Redis flavour on the confluent worker, and
    the Faust runtime on a single Redis (the runtimes share every Redis code path; a Redis Cluster
    adds nothing a runtime does differently)."""
    name, runtime = request.param
    url = (
        request.getfixturevalue("redis_cluster_urls")[0]
        if name == "cluster"
        else request.getfixturevalue("redis_url")
    )
    return name, url, runtime


@pytest.fixture(scope="session", autouse=True)
def _worker_logs() -> Iterator[None]:
    """Worker processes log to temporary files (kept for assertion messages during the session)."""
    yield
    from tests.support.kafka import remove_worker_logs

    remove_worker_logs()
