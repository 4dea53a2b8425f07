"""Lua scripts shipped beside this module, loaded once and called by SHA (reloaded on NOSCRIPT)."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError


class Script:
    """One ``lua/<name>.lua`` file; ``__call__`` runs EVALSHA and loads the script when Redis lost it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("attribution.state").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    def __call__(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


LOAD = Script("load")
APPLY = Script("apply")
TALLY_ACK = Script("tally_ack")
TOUCH = Script("touch")
