"""Every Redis key the engine uses, in one place.

Keys carry a Redis Cluster hash tag: ``{project|user_key}`` for user state, ``{project|campaign}`` for
campaign counters, ``{p<partition>}`` for a partition's event-time clock. Lua scripts receive keys in
KEYS and never build them.

==========================================  ======  ====================================================
key                                         type    contents
==========================================  ======  ====================================================
``<prefix>:u:{<project>|<user_key>}``       hash    ``v`` CAS version, ``s`` msgpack UserState; TTL in
                                                    event time (see ``attribution.core.user``)
``<prefix>:c:{<project>|<campaign>}``       hash    tally counters: sends, send_users, failed, clicks,
                                                    click_users, ``c|event|basis``,
                                                    ``r|event|basis|currency`` (decimal strings),
                                                    ``version``, ``as_of``, ``channel``
``<prefix>:clock:{p<partition>}``           string  newest event ts (ms) seen on that input partition
``<prefix>:dirty``                          zset    ``project:campaign`` members whose tally must be
                                                    (re)published; score = first-dirty wall ms
==========================================  ======  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "attribution"

    def user(self, project_id: str, user_key: str) -> str:
        return f"{self.prefix}:u:{{{project_id}|{user_key}}}"

    def campaign(self, project_id: str, campaign_id: str) -> str:
        return f"{self.prefix}:c:{{{project_id}|{campaign_id}}}"

    def campaign_of_member(self, member: str) -> str:
        project_id, campaign_id = member.split(":", 1)
        return self.campaign(project_id, campaign_id)

    def clock(self, partition: int) -> str:
        return f"{self.prefix}:clock:{{p{partition}}}"

    @property
    def dirty(self) -> str:
        return f"{self.prefix}:dirty"
