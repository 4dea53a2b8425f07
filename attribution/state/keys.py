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
                                                    batch was aborted for this user), then the state;
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
``<prefix>:campaigns:{<project>}``          set     dirty members of the project's campaigns (to
                                                    republish them all when its settings change)
``<prefix>:j:{p<partition>}``               hash    the partition's journal: ``seq`` of its last batch,
                                                    ``clock`` newest event ts (ms), ``body`` that batch's
                                                    counter deltas per user (``attribution.state.ledger``)
``<prefix>:dirty:{tally}``                  zset    ``["project","campaign"]`` (JSON) members whose
                                                    tally must be (re)published; score = the campaign's
                                                    newest version
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

import orjson

_ESCAPES = str.maketrans({"%": "%25", "|": "%7C", "{": "%7B", "}": "%7D"})


def _tag(project_id: str, other: str) -> str:
    return f"{{{project_id.translate(_ESCAPES)}|{other.translate(_ESCAPES)}}}"


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
