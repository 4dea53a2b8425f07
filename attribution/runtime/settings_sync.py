"""Project settings on their way in: the compacted settings topic, and the newest version kept in Redis.

A compacted topic keeps only the last record per project, so an older version published after a
newer one (by mistake, or by an old deploy job) could be all that a restarting worker finds. Two
guards make settings move forward only:

- ``publish`` reads the topic first and refuses a version that is not newer than the published one
  (the same version with the same content is accepted as already published: deploy jobs re-run);
- the worker keeps the settings it puts in force in Redis (``state/lua/settings.lua``, newest
  version wins) and, at start, takes the newer of the topic's and Redis' version of each project.

A record the worker refuses (not JSON, or settings ``parse_settings`` refuses) changes nothing and is
dead-lettered once: every worker reads the whole topic at each start, so the feed keeps the refused
records above the highest settings offset already dead-lettered (kept in Redis next to the kept
settings) until the worker holding input partition 0 (one member of the group) has published them
to the DLQ and raised that offset. A crash between the two, or partition 0 moving to another worker
meanwhile, publishes one again (the DLQ is at least once); a rebuild, which wipes Redis, does too.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence

import msgspec
import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from attribution.core.outputs import DeadLetter, dead_letter
from attribution.core.rules import ProjectSettings, SettingsBook, parse_settings
from attribution.errors import AttributionError, BadSettings, MissingTopics
from attribution.infra.config import Config
from attribution.runtime import kafka_io
from attribution.state.base import Store

log = logging.getLogger(__name__)


class SettingsFeed:
    """Reads the compacted settings topic from the beginning, then follows it; no consumer group.

    With a ``store``, settings found in Redis join the book at ``load_all`` (a newer version there
    wins), and the caller keeps every version it puts in force there (``keep``). ``pending`` holds
    the changes ``poll`` found until the caller has taken them in, so that a Redis error while doing
    so loses none."""

    def __init__(self, config: Config, book: SettingsBook, store: Store | None = None) -> None:
        self.config = config
        self.book = book
        self.store = store
        self.refused: list[DeadLetter] = []  # refused records not dead-lettered yet (module docstring)
        self.pending: list[ProjectSettings] = []
        topic = config.topic("settings")
        metadata = kafka_io.probe(config)
        partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
        if not partitions:
            raise MissingTopics(f"the settings topic {topic} does not exist: run `attribution topics create`")
        self.consumer = kafka_io.consumer(
            config,
            {
                "group.id": f"{config.group_id}-settings-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
            },
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._eof: set[int] = set()
        self._partitions = set(partitions)

    def load_all(self, timeout_s: float = 30.0) -> None:
        """Block until every settings partition has been read to its end once; then merge Redis'."""
        deadline = time.monotonic() + timeout_s
        while self._eof != self._partitions:
            if time.monotonic() > deadline:
                raise AttributionError(f"settings topic not read to its end within {timeout_s:.0f} s")
            self.poll(0.2)
        if self.store is None:
            return
        for document in self.store.settings_documents():
            try:
                kept = parse_settings(orjson.loads(document), self.config.max_conversion_events)
            except (BadSettings, orjson.JSONDecodeError) as exc:
                log.warning("settings kept in Redis refused (the topic's version stands): %s", exc)
                continue
            if self.book.put(kept):
                log.info(
                    "settings v%d of %s kept in Redis are newer than the topic's",
                    kept.version,
                    kept.project_id,
                )
        self.keep_all()
        self.pending = []

    def poll(self, timeout_s: float = 0.0) -> list[ProjectSettings]:
        """Apply whatever settings records arrived; returns the ones that changed the book."""
        changed = []
        for msg in self.consumer.consume(1000, timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof.add(msg.partition() or 0)
                    continue
                raise AttributionError(f"settings topic: {err.str()}")
            value = msg.value()
            if value is None:
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            settings = settings_record(
                topic, partition, offset, msg.key(), value, self.config.max_conversion_events
            )
            if isinstance(settings, DeadLetter):
                self.refused.append(settings)
                log.error("settings record at offset %d refused: %s", offset, settings.error)
                continue
            if self.book.put(settings):
                changed.append(settings)
        self.pending += changed
        return changed

    def dead_letters_due(self) -> list[DeadLetter]:
        """The refused records no worker has dead-lettered yet (by the offset kept in Redis)."""
        if not self.refused or self.store is None:
            return []
        streams = {(d.topic, d.partition) for d in self.refused}
        done = {(t, p): self.store.dead_lettered(f"{t}:{p}") for t, p in streams}
        self.refused = [d for d in self.refused if d.offset > done[(d.topic, d.partition)]]
        return list(self.refused)

    def dead_lettered(self, letters: Sequence[DeadLetter]) -> None:
        """``letters`` reached the DLQ: raise the highest dead-lettered offset kept in Redis."""
        if not letters or self.store is None:
            return
        highest: dict[tuple[str, int], int] = {}
        for d in letters:
            highest[(d.topic, d.partition)] = max(d.offset, highest.get((d.topic, d.partition), -1))
        for (topic, partition), offset in highest.items():
            self.store.mark_dead_lettered(f"{topic}:{partition}", offset)
        self.refused = [d for d in self.refused if d.offset > highest.get((d.topic, d.partition), -1)]

    def keep(self, settings: Iterable[ProjectSettings | None]) -> None:
        """Keep these settings in Redis (a newer version kept there stays)."""
        if self.store is None:
            return
        for s in settings:
            if s is not None:
                self.store.save_settings(s.project_id, s.version, msgspec.json.encode(s))

    def keep_all(self) -> None:
        """Keep every project's settings in force (again, after a rebuild wiped the state)."""
        self.keep(self.book.get(p) for p in self.book.projects())

    def close(self) -> None:
        self.consumer.close()


def settings_record(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes, max_events: int
) -> ProjectSettings | DeadLetter:
    """The settings a record of the settings topic holds, or the dead letter saying why it is refused."""
    try:
        return parse_settings(orjson.loads(value), max_events)
    except orjson.JSONDecodeError as exc:
        reason = f"not JSON: {exc}"
    except BadSettings as exc:
        reason = f"invalid settings: {exc}"
    return dead_letter(topic, partition, offset, key, value, reason)


def published(config: Config) -> SettingsBook:
    """The newest settings of every project on the settings topic."""
    feed = SettingsFeed(config, book := SettingsBook())
    try:
        feed.load_all()
    finally:
        feed.close()
    return book


def publish(config: Config, documents: Sequence[ProjectSettings]) -> dict[str, str]:
    """Publish validated settings, keyed by project; returns ``project vN`` -> published | unchanged.

    Raises BadSettings, naming both versions, for a version that is not newer than the one on the
    topic (the same version with other content included)."""
    book = published(config)
    status: dict[str, str] = {}
    to_send: list[ProjectSettings] = []
    for doc in documents:
        known = book.get(doc.project_id)
        name = f"{doc.project_id} v{doc.version}"
        if known is not None and known.version == doc.version and known == doc:
            status[name] = "unchanged (already published)"
            continue
        if known is not None and known.version >= doc.version:
            raise BadSettings(
                f"{doc.project_id} version",
                f"v{doc.version} is not newer than v{known.version}, which is already published; "
                f"publish v{known.version + 1} or later (a worker never goes back to an older version)",
            )
        book.put(doc)
        to_send.append(doc)
        status[name] = "published"
    p = kafka_io.producer(config)
    for doc in to_send:
        p.produce(config.topic("settings"), key=doc.project_id.encode(), value=msgspec.json.encode(doc))
    if p.flush(30) != 0:
        raise AttributionError("settings not delivered within 30 s")
    return status
