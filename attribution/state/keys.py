"""Every Redis key the engine uses, in one place.

Keys carry a Redis Cluster hash tag: ``{project|user_key}`` for user state, ``{project|campaign}`` for
campaign counters, ``{p<partition>}`` for a partition's journal. Every script call touches the keys of
one hash slot only (``attribution.state.router`` splits calls per slot on a cluster). Lua scripts
receive keys in KEYS and never build them.

==========================================  ======  ====================================================
key                                         type    contents
==========================================  ======  ====================================================
``<prefix>:u:{<project>|<user_key>}``       string  ``<fence>|<msgpack UserState>``: the batch fence
                                                    ``<partition>:<seq>`` (``-`` appended when that
                                                    batch was aborted for this user), then the state
                                                    in its wire form (layout 3, ``user_state.Wire``:
                                                    each id once per user, times as deltas);
                                                    TTL in event time (see ``attribution.core.user``).
                                                    A string, not a hash: a state blob is longer than
                                                    a listpack value, and a hashtable costs ~190 B more
``<prefix>:c:{<project>|<campaign>}``       hash    tally counters: sends, send_users, failed, clicks,
                                                    click_users, ``c|event|basis``,
                                                    ``r|event|basis|currency`` (decimal strings),
                                                    ``version``, ``as_of``, ``ch|<channel>`` (1 for each
                                                    channel its sends and clicks came on; ``channel``:
                                                    the first one, in hashes of earlier versions),
                                                    ``f|<partition>`` (seq of the last batch of that
                                                    partition applied)
``<prefix>:s:{<project>}``                  hash    the project's subscription counters: ``on``
                                                    (users whose web-push permission is on),
                                                    ``v|<day>|on`` / ``v|<day>|off`` (users by last
                                                    visit day and permission), ``as_of`` (the
                                                    project clock), ``version``, ``f|<partition>``;
                                                    never expires
``<prefix>:sd:{<project>|<day>}``           hash    one day's subscription counters (``sessions``),
                                                    ``version``, ``as_of``, ``f|<partition>``
``<prefix>:campaigns:{<project>}``          set     dirty members of the project's campaigns and
                                                    subscription records (to republish them all
                                                    when its settings change)
``<prefix>:j:{p<partition>}``               hash    the partition's journal: ``seq`` of its last batch,
                                                    ``clock`` newest event ts (ms), ``body`` that batch's
                                                    counter deltas per user (``attribution.state.ledger``)
``<prefix>:dirty:{tally}``                  zset    members whose record must be (re)published, JSON:
                                                    ``["project","campaign"]`` a campaign tally,
                                                    ``["project"]`` the subscriptions record,
                                                    ``["project","day",0]`` a day's subscriptions;
                                                    score = the counters' newest version
``<prefix>:appended:{tally}``               hash    member -> ``<offset>:<version>`` of its last record
                                                    on the tallies topic (same slot as the dirty set)
``<prefix>:settings:{settings}``            hash    project id -> ``<version>|<JSON settings>``: the
                                                    newest settings a worker put in force (a compacted
                                                    settings topic may keep only an older record)
``<prefix>:dlq:{settings}``                 zset    ``<settings topic>:<partition>`` -> the highest offset
                                                    of a refused settings record a worker dead-lettered
                                                    (so that a restart does not dead-letter it again)
``<prefix>:gen``, ``<prefix>:gen:{<tag>}``  string  the state generation (one marker per hash slot on a
                                                    cluster): missing markers mean lost state
==========================================  ======  ====================================================

Ids inside a hash tag are escaped (``%`` ``|`` ``{`` ``}`` as ``%25`` ``%7C`` ``%7B`` ``%7D``) so that two
different (project, id) pairs can never name the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import orjson

_ESCAPES = str.maketrans({"%": "%25", "|": "%7C", "{": "%7B", "}": "%7D"})


def _tag(project_id: str, other: str) -> str:
    return f"{{{project_id.translate(_ESCAPES)}|{other.translate(_ESCAPES)}}}"


class Subject(NamedTuple):
    """What a counter hash counts: a campaign (``campaign_id``), the project's subscriptions (neither)
    or one day of them (``day``)."""

    project_id: str
    campaign_id: str | None = None
    day: str | None = None


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "attribution"

    def user(self, project_id: str, user_key: str) -> str:  # once per user per batch: _tag inlined
        return f"{self.prefix}:u:{{{project_id.translate(_ESCAPES)}|{user_key.translate(_ESCAPES)}}}"

    def campaign(self, project_id: str, campaign_id: str) -> str:
        return f"{self.prefix}:c:{_tag(project_id, campaign_id)}"

    @staticmethod
    def member(project_id: str, campaign_id: str) -> str:
        """A campaign's name in the dirty set: unambiguous whatever characters the ids hold."""
        return orjson.dumps([project_id, campaign_id]).decode()

    @staticmethod
    def parse_member(member: str) -> tuple[str, str]:
        project_id, campaign_id = orjson.loads(member)
        return str(project_id), str(campaign_id)

    def subscriptions(self, project_id: str) -> str:
        return f"{self.prefix}:s:{{{project_id.translate(_ESCAPES)}}}"

    def subscription_day(self, project_id: str, day: str) -> str:
        return f"{self.prefix}:sd:{_tag(project_id, day)}"

    @staticmethod
    def subject_member(subject: Subject) -> str:
        """The dirty-set member of any counter hash (``member`` for a campaign's)."""
        if subject.campaign_id is not None:
            return orjson.dumps([subject.project_id, subject.campaign_id]).decode()
        if subject.day is not None:
            return orjson.dumps([subject.project_id, subject.day, 0]).decode()
        return orjson.dumps([subject.project_id]).decode()

    @staticmethod
    def parse_subject(member: str) -> Subject:
        parts = orjson.loads(member)
        if len(parts) == 1:
            return Subject(str(parts[0]))
        if len(parts) == 3:
            return Subject(str(parts[0]), None, str(parts[1]))
        return Subject(str(parts[0]), str(parts[1]))

    def counters_of(self, subject: Subject) -> str:
        """The counter hash of ``subject``."""
        if subject.campaign_id is not None:
            return self.campaign(subject.project_id, subject.campaign_id)
        if subject.day is not None:
            return self.subscription_day(subject.project_id, subject.day)
        return self.subscriptions(subject.project_id)

    def project_campaigns(self, project_id: str) -> str:
        return f"{self.prefix}:campaigns:{{{project_id.translate(_ESCAPES)}}}"

    def journal(self, partition: int) -> str:
        return f"{self.prefix}:j:{{p{partition}}}"

    @property
    def generation(self) -> str:
        return f"{self.prefix}:gen"

    def generation_marker(self, tag: str) -> str:
        """The marker stored in the hash slot of ``tag`` (one per slot on a Redis Cluster)."""
        return f"{self.prefix}:gen:{{{tag}}}"

    @property
    def settings(self) -> str:
        return f"{self.prefix}:settings:{{settings}}"

    @property
    def dead_lettered(self) -> str:
        return f"{self.prefix}:dlq:{{settings}}"

    @property
    def dirty(self) -> str:
        return f"{self.prefix}:dirty:{{tally}}"

    @property
    def appended(self) -> str:
        return f"{self.prefix}:appended:{{tally}}"
