"""Round trips through the service fixtures: broker, valkey, redis-server 7.0, valkey cluster."""

from __future__ import annotations

import time

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from redis.cluster import RedisCluster
from redis.crc import key_slot

pytestmark = pytest.mark.integration

INCR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def test_kafka_produce_consume_with_group(kafka_bootstrap: str, unique: str) -> None:
    topic = f"svc-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=10)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    sent = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(3)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{unique}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value()))
        assert got == sent
        committed = consumer.commit(asynchronous=False)
        assert committed is not None
        assert [tp.offset for tp in committed] == [len(sent)]
    finally:
        consumer.close()


def test_lua_on_valkey(redis_client: redis.Redis, unique: str) -> None:
    key = f"{unique}:n"
    assert redis_client.eval(INCR_SCRIPT, 1, key, 5) == 5
    assert redis_client.eval(INCR_SCRIPT, 1, key, 2) == 7


def test_lua_on_redis_server_7(redis_server_url: str, unique: str) -> None:
    with redis.Redis.from_url(redis_server_url) as client:
        assert str(client.info("server")["redis_version"]).startswith("7.")
        key = f"{unique}:n"
        assert client.eval(INCR_SCRIPT, 1, key, 5) == 5
        assert client.eval(INCR_SCRIPT, 1, key, 2) == 7


def test_hash_tagged_multi_key_lua_on_cluster(redis_cluster_urls: list[str], unique: str) -> None:
    script = """
    redis.call('SET', KEYS[1], ARGV[1])
    redis.call('HSET', KEYS[2], 'f', ARGV[2])
    return {redis.call('GET', KEYS[1]), redis.call('HGET', KEYS[2], 'f')}
    """
    client = RedisCluster.from_url(redis_cluster_urls[0])
    try:
        keys = [f"{{{unique}}}:a", f"{{{unique}}}:b"]
        assert key_slot(keys[0].encode()) == key_slot(keys[1].encode())
        assert client.eval(script, 2, *keys, "x", "y") == [b"x", b"y"]
        assert client.get(keys[0]) == b"x"
    finally:
        client.close()
